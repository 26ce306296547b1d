"""Starting the child and making sure nothing it started outlives its term.

leaderrun is a child subreaper (Linux PR_SET_CHILD_SUBREAPER): a process the child leaves behind,
even one that called setsid() or left the process group, is re-parented to leaderrun rather
than to init. So "every descendant" is simply every process below us, and we can stop them all
before we release leadership — the property `etcdctl lock` and zk-flock lack.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import psutil

from leaderrun.errors import CommandNotExecutable, CommandNotFound, signal_exit_code

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
POLL_INTERVAL = 0.02
KILL_WAIT = 5.0


def become_subreaper() -> None:
    """Adopt every orphaned descendant, so none can escape the clean-up."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def resolve_command(command: Sequence[str]) -> str:
    """Find COMMAND before campaigning, so a host that cannot run it never takes the lead."""
    name = command[0]
    if "/" in name:
        if not os.path.exists(name):
            raise CommandNotFound(f"command not found: {name}")
        if os.path.isdir(name) or not os.access(name, os.X_OK):
            raise CommandNotExecutable(f"command is not executable: {name} (chmod +x it?)")
        return name
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CommandNotFound(f"command not found in PATH: {name}")


@dataclass
class Child:
    """The command, running as the leader of its own process group."""

    popen: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exit_status(self) -> int | None:
        """The shell-style status (128+N for a signal), or None while it runs."""
        code = self.popen.poll()
        if code is None:
            return None
        return signal_exit_code(-code) if code < 0 else code

    def send_signal(self, signum: int) -> None:
        """Signal the child's whole process group, as a terminal would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)


def spawn(command: Sequence[str], env: Mapping[str, str]) -> Child:
    """Start COMMAND directly (no shell) in its own process group, stdio inherited."""
    try:
        popen = subprocess.Popen(list(command), env=dict(env), process_group=0, close_fds=True)
    except FileNotFoundError:
        raise CommandNotFound(f"command not found: {command[0]}") from None
    except PermissionError:
        raise CommandNotExecutable(f"command is not executable: {command[0]}") from None
    except OSError as exc:
        if exc.errno == errno.ENOEXEC:
            raise CommandNotExecutable(
                f"command is not executable: {command[0]} (missing #! line?)"
            ) from None
        raise
    return Child(popen)


def live_descendants(keep: int | None = None) -> list[psutil.Process]:
    """Every process below us that has not exited yet (zombies are reaped, not listed)."""
    reap_zombies(keep)
    alive = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            continue
    return alive


def reap_zombies(keep: int | None = None) -> None:
    """Collect exited orphans that were re-parented to us, except the child `keep`.

    The child's own status is collected by its Popen object; reaping it here would lose it.
    """
    for proc in psutil.Process().children():
        if proc.pid == keep:
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(proc.pid, os.WNOHANG)
        except (psutil.NoSuchProcess, ChildProcessError):
            continue


def signal_all(child: Child | None, signum: int) -> int:
    """Send `signum` to the child's process group and to every descendant; count targets."""
    targets = live_descendants(_pid_of(child))
    if child is not None and child.exit_status() is None:
        child.send_signal(signum)
    for proc in targets:
        try:
            proc.send_signal(signum)
        except psutil.NoSuchProcess:
            continue
    return len(targets)


def _all_gone(child: Child | None) -> bool:
    if child is not None and child.exit_status() is None:
        return False
    return not live_descendants(_pid_of(child))


def _pid_of(child: Child | None) -> int | None:
    return child.pid if child is not None and child.popen.returncode is None else None


def _wait_all_gone(child: Child | None, until: float) -> bool:
    while True:
        if _all_gone(child):
            return True
        if time.monotonic() >= until:
            return False
        time.sleep(min(POLL_INTERVAL, max(0.0, until - time.monotonic())))


def stop_everything(child: Child | None, grace: float, kill_by: float | None = None) -> None:
    """SIGTERM the child's group and all descendants, SIGKILL what is left after `grace`.

    `kill_by` (monotonic) brings the SIGKILL forward when the lease deadline is nearer than the
    grace period: the timing rule beats politeness.
    """
    if _all_gone(child):
        return
    started = time.monotonic()
    kill_at = started + grace if kill_by is None else min(started + grace, kill_by)
    if kill_at > started:
        count = signal_all(child, signal.SIGTERM)
        log.debug("sent SIGTERM to %d process(es)", count)
        if _wait_all_gone(child, kill_at):
            return
    count = signal_all(child, signal.SIGKILL)
    log.warning("killed %d process(es) with SIGKILL after %.1fs", count, kill_at - started)
    if not _wait_all_gone(child, time.monotonic() + KILL_WAIT):
        log.error(
            "processes still alive %.0fs after SIGKILL (uninterruptible sleep?): %s",
            KILL_WAIT,
            ", ".join(str(p.pid) for p in live_descendants(_pid_of(child))),
        )


def kill_everything_now() -> None:
    """SIGKILL every descendant at once: leaderrun's own process is gone, no time for grace."""
    for _ in range(100):
        targets = live_descendants()
        if not targets:
            return
        for proc in targets:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(targets, timeout=0.5)
