"""Small test helpers: polling for events and owning the subprocesses a test starts.

Tests run leaderrun as a real subprocess against real servers, so they wait on observable
events (a file appears, a key exists, a process exits) instead of sleeping, and every process
they start must be gone when the test ends, whether it passed or not.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")

#: argv prefix that runs the CLI under test with the interpreter running pytest.
LEADERRUN_CMD: tuple[str, ...] = (sys.executable, "-m", "leaderrun")


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.05,
    message: str = "",
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that value.

    For awaiting an *event*, never as a sleep. The predicate is evaluated at least once,
    and once more at the deadline, so a slow last poll cannot turn success into a timeout.
    Exceptions from the predicate propagate: a broken probe should fail loudly.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        now = time.monotonic()
        if now >= deadline:
            what = message or getattr(predicate, "__name__", repr(predicate))
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(min(interval, max(0.0, deadline - now)))


def clean_env(extra: Mapping[str, str] | None = None, **overrides: str) -> dict[str, str]:
    """The current environment without anything that would configure leaderrun by accident.

    The SPEC lets every option come from ``LEADERRUN_*``; a developer's shell (or a systemd
    ``NOTIFY_SOCKET``) must not leak into what a test observes.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LEADERRUN_") and k != "NOTIFY_SOCKET"
    }
    if extra:
        env.update(extra)
    env.update(overrides)
    return env


def descendants(pid: int) -> list[int]:
    """PIDs of all live descendants of ``pid`` (read from /proc; no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Field 4 (ppid) follows the parenthesised command name, which may contain spaces.
        fields = stat.rsplit(")", 1)[1].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


class Output(NamedTuple):
    """Captured output of a tracked process."""

    stdout: str
    stderr: str


class TrackedPopen(subprocess.Popen[Any]):
    """A ``Popen`` that knows where its output went (``None`` when the caller redirected it)."""

    stdout_path: Path | None
    stderr_path: Path | None
    new_session: bool

    def read_stdout(self) -> str:
        """Everything written to stdout so far ("" if not captured to a file)."""
        return _read(self.stdout_path)

    def read_stderr(self) -> str:
        """Everything written to stderr so far ("" if not captured to a file)."""
        return _read(self.stderr_path)

    def output(self) -> Output:
        """Both captured streams so far."""
        return Output(self.read_stdout(), self.read_stderr())


def _read(path: Path | None) -> str:
    if path is None or not path.exists():
        return ""
    return path.read_text(errors="replace")


def read_output(p: TrackedPopen) -> Output:
    """Captured stdout and stderr of ``p`` so far."""
    return p.output()


class ProcessRegistry:
    """Starts subprocesses for one test and kills whatever is left of them at teardown.

    By default stdin is ``/dev/null``, stdout/stderr go to files under ``log_dir`` (so nothing
    can block on a full pipe) and the environment is :func:`clean_env`. Any ``Popen`` keyword
    given by the caller wins.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[TrackedPopen] = []

    def start(
        self, argv: Sequence[str], name: str | None = None, **popen_kwargs: Any
    ) -> TrackedPopen:
        """Start ``argv`` and track it; ``name`` labels its output files."""
        n = len(self.procs)
        label = f"{n:02d}-{name or Path(argv[0]).name}"
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        popen_kwargs.setdefault("env", clean_env())
        out_path = err_path = None
        with contextlib.ExitStack() as files:
            if "stdout" not in popen_kwargs:
                out_path = self.log_dir / f"{label}.out"
                popen_kwargs["stdout"] = files.enter_context(out_path.open("wb"))
            if "stderr" not in popen_kwargs:
                err_path = self.log_dir / f"{label}.err"
                popen_kwargs["stderr"] = files.enter_context(err_path.open("wb"))
            # The child holds its own copies of the descriptors; ours close on leaving.
            proc = TrackedPopen(list(argv), **popen_kwargs)
        proc.stdout_path = out_path
        proc.stderr_path = err_path
        proc.new_session = bool(popen_kwargs.get("start_new_session"))
        self.procs.append(proc)
        return proc

    def __iter__(self) -> Iterator[TrackedPopen]:
        return iter(self.procs)

    def kill_all(self) -> None:
        """SIGKILL every tracked process, its process group (if it had its own) and descendants.

        The group is killed even when its leader already exited: leftovers in it are exactly
        what a leaderrun bug would leave behind, and they must not outlive the test.
        """
        for proc in self.procs:
            targets = descendants(proc.pid) if proc.poll() is None else []
            if proc.new_session:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            for pid in [proc.pid, *targets]:
                if pid == proc.pid and proc.returncode is not None:
                    continue  # reaped: the PID may belong to someone else by now
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
