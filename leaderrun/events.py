"""Wake-ups as file descriptors, so each process of leaderrun has exactly one place it waits.

The guard and the worker each run one loop that blocks in `wait()` on descriptors: signals
arrive as bytes on a pipe (`signal.set_wakeup_fd`), the store's threads poke a `Wakeup` pipe,
processes end through pidfds. The only timeout ever given is the next deadline the loop owns
(stop the child, kill it, give up waiting): nothing wakes to look whether something happened.

Standard library only: the guard imports this before the heavy client libraries exist.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Iterable

FORWARDED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _pipe() -> tuple[int, int]:
    return os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)


def _drain(fd: int) -> bytes:
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    return b"".join(chunks)


class Wakeup:
    """A pipe any thread can poke without ever blocking: a full pipe already means "wake up"."""

    def __init__(self) -> None:
        self.fd, self._write_fd = _pipe()

    def poke(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write_fd, b"\0")

    def drain(self) -> None:
        _drain(self.fd)

    def close(self) -> None:
        for fd in (self.fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class SignalInbox:
    """Signals delivered as bytes on a pipe by the interpreter's C-level handler.

    Every signal becomes one byte, in arrival order, read by the loop when it is ready: none is
    lost between a check and a wait, and no Python handler does work at an arbitrary point.
    """

    def __init__(self, signals: Iterable[int] = FORWARDED_SIGNALS) -> None:
        self.fd, write_fd = _pipe()
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for signum in signals:
            signal.signal(signum, _record_only)

    def take(self) -> list[int]:
        """The signals received since the last call, oldest first."""
        return list(_drain(self.fd))


def _record_only(signum: int, frame: object) -> None:
    """The Python-level handler: the wakeup fd already carries the signal."""


def wait(fds: Iterable[int], until: float | None = None) -> set[int]:
    """Block until one of `fds` is readable (or hung up) or the monotonic time `until`.

    Returns the ready descriptors (empty when the deadline came first).
    """
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN | select.POLLPRI)
    timeout_ms: float | None = None
    if until is not None and until != float("inf"):
        timeout_ms = max(0.0, (until - time.monotonic()) * 1000.0)
        # poll() rounds down to whole milliseconds: never wake before the deadline.
        timeout_ms = float(int(timeout_ms) + 1) if timeout_ms else 0.0
    try:
        events = poller.poll(timeout_ms)
    except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
        return set()
    return {fd for fd, _ in events}
