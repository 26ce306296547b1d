"""Two processes, so that nothing leaderrun started survives leaderrun being killed.

The pid the user sees (the *guard*) forks a *worker* that does all the work: it talks to the
backend (gRPC threads and all) and supervises the child. Each watches the other:

- guard SIGKILLed -> the worker sees EOF on a pipe only the guard held open, kills the child's
  whole tree at once, then releases leadership over its live connection (next leader in ~1 s);
- worker killed (OOM, SIGKILL) -> the guard, a subreaper like the worker, inherits the child
  and everything it started, kills them all, then revokes the lease the worker reported.

Both are subreapers, so a descendant that called setsid() still ends up below one of them.
The guard stays single-threaded and never talks to the backend unless the worker died.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from leaderrun import process
from leaderrun.errors import ExitCode, LeaderrunError, signal_exit_code
from leaderrun.settings import Settings
from leaderrun.supervisor import FORWARDED_SIGNALS, STOP_SIGNALS, Supervisor

log = logging.getLogger("leaderrun")


def run_guarded(settings: Settings) -> int:
    """Fork the worker, forward signals to it, and clean up after it if it dies."""
    process.become_subreaper()
    life_r, life_w = os.pipe()
    info_r, info_w = os.pipe()
    worker = os.fork()
    if worker == 0:
        os.close(life_w)
        os.close(info_r)
        os._exit(_worker_main(settings, life_r, info_w))
    os.close(life_r)
    os.close(info_w)
    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, _forwarder(worker))
    return _guard_loop(settings, worker, info_r)


def _forwarder(worker: int) -> Callable[[int, object], None]:
    def forward(signum: int, frame: object) -> None:
        if signum in STOP_SIGNALS:
            sd_notify("STOPPING=1")
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signum)

    return forward


def _guard_loop(settings: Settings, worker: int, info_r: int) -> int:
    reports = WorkerReports()
    pidfd = os.pidfd_open(worker)
    while True:
        readable, _, _ = select.select([pidfd, info_r], [], [])
        if info_r in readable:
            reports.feed(os.read(info_r, 65536))
        if pidfd in readable:
            break
    _, status = os.waitpid(worker, 0)
    while chunk := os.read(info_r, 65536):
        reports.feed(chunk)
    if os.WIFEXITED(status):
        process.kill_everything_now()
        return os.WEXITSTATUS(status)
    return _worker_died(settings, os.WTERMSIG(status), reports)


def _worker_died(settings: Settings, signum: int, reports: WorkerReports) -> int:
    log.error(
        "leaderrun's worker process died from %s; killing every process of the child",
        signal.Signals(signum).name,
    )
    process.kill_everything_now()
    if reports.handle is not None and not reports.released:
        from leaderrun.backends import backend_class

        try:
            backend_class(settings.backend.scheme).release_orphaned(settings, reports.handle)
            log.warning("released leadership of %s after the worker died", settings.election_path)
        except Exception as exc:  # the lease still expires by itself
            log.error("could not release the lease (%s); it expires within its TTL", exc)
    return ExitCode.LOST if reports.child_started else signal_exit_code(signum)


def sd_notify(message: str) -> None:
    """Send one sd_notify datagram to systemd when it asked for them (`Type=notify`).

    Only the unit's main pid may notify under systemd's default `NotifyAccess=main`, which is
    why the worker reports its state changes here instead of notifying itself.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.debug("sd_notify to %s failed: %s", address, exc)


class WorkerReports:
    """What the worker told us: its lease/session handle, whether a child ran, release."""

    def __init__(self) -> None:
        self.ready_sent = False
        self.buffer = b""
        self.handle: dict[str, Any] | None = None
        self.child_started = False
        self.released = False

    def feed(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            event = json.loads(line)
            if event["event"] == "lease":
                self.handle, self.released = event["handle"], False
            elif event["event"] == "child":
                self.child_started = True
            elif event["event"] == "released":
                self.released = True
            elif event["event"] == "notify":
                self._notify(str(event["status"]), bool(event["ready"]))

    def _notify(self, status: str, ready: bool) -> None:
        message = f"STATUS={status}"
        if ready and not self.ready_sent:
            self.ready_sent = True
            message = f"READY=1\n{message}"
        sd_notify(message)


def _worker_main(settings: Settings, life_r: int, info_w: int) -> int:
    """The worker: its own process group, so terminal signals reach it only via the guard."""
    os.setpgid(0, 0)

    def report(event: dict[str, object]) -> None:
        # The guard may be gone (SIGKILLed): the worker must still clean up and release.
        with contextlib.suppress(BrokenPipeError):
            os.write(info_w, json.dumps(event).encode() + b"\n")

    try:
        return Supervisor(settings, report=report, parent_gone_fd=life_r).run()
    except LeaderrunError as exc:
        log.error("%s", exc.message)
        return exc.exit_code
    except Exception:  # one line for the operator, details at -vv
        log.error("internal error; run with -vv for details", exc_info=settings.verbosity >= 2)
        return 70
    finally:
        sys.stderr.flush()
