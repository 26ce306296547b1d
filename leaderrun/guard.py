"""Two processes, each able to stop the child by the deadline alone.

The pid the user sees (the *guard*) is forked off before any client library is imported: small,
single-threaded, it never talks to the store while the worker lives. The *worker* does the work
(store connection, threads, the child). They watch each other:

- the worker sends the guard every new kill deadline (monotonic clock, shared by both); the
  guard SIGTERMs the child's whole tree at `stop` and SIGKILLs it at `kill` unless a newer
  deadline came first. So a worker that is stopped (SIGSTOP), stuck or starved cannot keep the
  child past `t_ack + T - safety`: its own stall is covered.
- guard SIGKILLed -> the worker sees EOF on a pipe only the guard held open, kills the child's
  whole tree at once, then releases over its live connection (next leader in ~1 s);
- worker killed (OOM, SIGKILL) -> the guard, a subreaper like the worker, inherits the child
  and everything it started, kills them all, then releases the lease/session the worker
  reported.

Reports in both directions never block: the worker drops what does not fit in the pipe (the
guard then acts on an older deadline: earlier, the safe side), and the guard only reads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from leaderrun import events, process
from leaderrun.errors import ExitCode, LeaderrunError, signal_exit_code
from leaderrun.settings import Settings

log = logging.getLogger("leaderrun")


def run_guarded(settings: Settings) -> int:
    """Fork the worker, forward signals to it, enforce its deadlines, clean up after it."""
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
    os.set_blocking(info_r, False)
    os.set_blocking(life_w, False)
    return Guard(settings, worker, info_r, life_w, watchdog_interval()).run()


def watchdog_interval() -> float | None:
    """Half of systemd's `WatchdogSec=` when it is meant for us (`WATCHDOG_PID` is ours)."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


@dataclass
class Armed:
    """The deadline the guard enforces, and the child it must stop by then (the worker's
    whole tree is stopped even before the child's pid arrives: it is the worker's child)."""

    stop: float
    kill: float
    pgid: int | None = None
    cgroup: str | None = None
    termed: bool = False
    killed: bool = False


@dataclass
class Guard:
    """The guard's loop: worker alive? new report? deadline reached? kill, then go on."""

    settings: Settings
    worker: int
    info_fd: int
    #: Our end of the pipe whose EOF tells the worker we died; a byte on it is a ping.
    life_fd: int = -1
    #: Send `WATCHDOG=1` this often (systemd's WatchdogSec / 2), when the worker answers.
    watchdog: float | None = None
    next_ping: float = 0.0
    handle: dict[str, Any] | None = None
    released: bool = True
    child_started: bool = False
    armed: Armed | None = None
    ready_sent: bool = False
    _buffer: bytes = field(default=b"", repr=False)

    def run(self) -> int:
        inbox = events.SignalInbox()
        pidfd = os.pidfd_open(self.worker)
        while True:
            ready = events.wait([pidfd, self.info_fd, inbox.fd], self._next_action())
            if self.info_fd in ready:
                self._read_reports()
            if inbox.fd in ready:
                self._forward(inbox.take())
            now = time.monotonic()
            self._enforce(now)
            self._ping(now)
            if pidfd in ready:
                break
        _, status = os.waitpid(self.worker, 0)
        self._read_reports()
        process.kill_everything_now()
        if os.WIFEXITED(status):
            return os.WEXITSTATUS(status)
        return self._worker_died(os.WTERMSIG(status))

    # -- the deadline -------------------------------------------------------------------------

    def _next_action(self) -> float | None:
        moments = [self.next_ping] if self.watchdog is not None else []
        armed = self.armed
        if armed is not None and not armed.killed:
            moments.append(armed.kill if armed.termed else armed.stop)
        return min(moments) if moments else None

    def _ping(self, now: float) -> None:
        """systemd's watchdog: ask the worker's loop; `WATCHDOG=1` goes out on its answer."""
        if self.watchdog is None or now < self.next_ping:
            return
        self.next_ping = now + self.watchdog
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self.life_fd, b"p")

    def _pong(self) -> None:
        """The worker's loop is alive; vouch for it only while its lease is inside the
        deadline (a leader past its stop point is not healthy, whatever its loop does)."""
        armed = self.armed
        if armed is None or time.monotonic() < armed.stop:
            sd_notify("WATCHDOG=1")

    def _enforce(self, now: float) -> None:
        """Stop the child's tree at the deadline the worker last sent, whatever the worker does."""
        armed = self.armed
        if armed is None:
            return
        if not armed.termed and now >= armed.stop:
            armed.termed = True
            sweep = process.signal_tree_of(self.worker, armed.pgid, armed.cgroup, signal.SIGTERM)
            if sweep.signalled:
                log.warning(
                    "leaderrun's worker did not stop the child in time (stalled?); the guard "
                    "sent SIGTERM to %d process(es)",
                    len(sweep.signalled),
                )
        if not armed.killed and now >= armed.kill:
            armed.killed = True
            sweep = process.signal_tree_of(self.worker, armed.pgid, armed.cgroup, signal.SIGKILL)
            if sweep.signalled:
                log.warning(
                    "leaderrun's guard killed %d process(es) of the child at the lease deadline",
                    len(sweep.signalled),
                )

    # -- reports from the worker --------------------------------------------------------------

    def _read_reports(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.info_fd, 65536):
                self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line:
                self._on_report(json.loads(line))

    def _on_report(self, report: dict[str, Any]) -> None:
        kind = report["e"]
        if kind == "queued":
            self.handle, self.released = report["handle"], False
        elif kind == "deadline":
            stop, kill = float(report["stop"]), float(report["kill"])
            if self.armed is None:
                self.armed = Armed(stop, kill)
            elif kill > self.armed.kill:  # a newer deadline: the lease was renewed
                self.armed.stop, self.armed.kill = stop, kill
                self.armed.termed = self.armed.killed = False
        elif kind == "child" and self.armed is not None:
            self.child_started = True
            self.armed.pgid, self.armed.cgroup = int(report["pid"]), report.get("cgroup")
        elif kind == "stopping" and self.armed is not None:
            self.armed.termed = True  # the worker sent SIGTERM itself; SIGKILL stays armed
        elif kind == "tree_gone":
            self.armed = None
        elif kind == "released":
            self.released = True
        elif kind == "pong":
            self._pong()
        elif kind == "notify":
            self._notify(str(report["status"]), bool(report["ready"]))

    def _forward(self, signals: list[int]) -> None:
        for signum in signals:
            if signum in events.STOP_SIGNALS:
                sd_notify("STOPPING=1")
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.worker, signum)

    def _notify(self, status: str, ready: bool) -> None:
        message = f"STATUS={status}"
        if ready and not self.ready_sent:
            self.ready_sent = True
            message = f"READY=1\n{message}"
        sd_notify(message)

    # -- the worker died ----------------------------------------------------------------------

    def _worker_died(self, signum: int) -> int:
        log.error(
            "leaderrun's worker process died from %s; killed every process of the child",
            signal.Signals(signum).name,
        )
        if self.handle is not None and not self.released:
            from leaderrun.backends import backend_class

            try:
                backend_class(self.settings.backend.scheme).release_orphaned(
                    self.settings, self.handle
                )
                log.warning(
                    "released leadership of %s after the worker died", self.settings.election_path
                )
            except Exception as exc:  # the lease still expires by itself
                log.error("could not release the lease (%s); it expires within its TTL", exc)
        return ExitCode.LOST if self.child_started else signal_exit_code(signum)


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
            sock.setblocking(False)
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.debug("sd_notify to %s failed: %s", address, exc)


class GuardLink:
    """The worker's side: reports to the guard, and the guard's death as a readable fd."""

    def __init__(self, report_fd: int | None = None, gone_fd: int | None = None) -> None:
        self.report_fd = report_fd
        self.gone_fd = gone_fd
        self.dropped = 0
        if report_fd is not None:
            os.set_blocking(report_fd, False)
        if gone_fd is not None:
            os.set_blocking(gone_fd, False)

    def guard_died(self) -> bool:
        """`gone_fd` is readable: EOF means the guard is gone; bytes are watchdog pings,
        answered at once (this runs in the supervision loop: the answer proves it alive)."""
        assert self.gone_fd is not None
        try:
            pings = os.read(self.gone_fd, 64)
        except BlockingIOError:
            return False
        if not pings:
            return True
        self.send("pong")
        return False

    def send(self, kind: str, **fields: Any) -> None:
        """One line, written whole or not at all (< PIPE_BUF bytes are atomic): never blocks."""
        if self.report_fd is None:
            return
        line = json.dumps({"e": kind, **fields}).encode() + b"\n"
        try:
            os.write(self.report_fd, line)
        except (BlockingIOError, BrokenPipeError):
            # A guard that does not read acts on an older, earlier deadline; one that is gone
            # is noticed through `gone_fd`.
            self.dropped += 1

    def leaderrun_pid(self) -> int:
        """The pid users see: the guard's when there is one."""
        return os.getppid() if self.gone_fd is not None else os.getpid()


def _fatal(settings: Settings, message: str) -> None:
    """The error that ends `run`, in the one format every leaderrun error has on a terminal or
    in a cron mail (`leaderrun: error: ...`); as a JSON log line under --log-format json."""
    if settings.log_format == "json":
        log.error("%s", message)
        return
    from leaderrun import log as logs

    logs.flush(1.0)
    with contextlib.suppress(OSError):
        os.write(2, f"leaderrun: error: {message}\n".encode())


def _worker_main(settings: Settings, life_r: int, info_w: int) -> int:
    """The worker: its own process group, so terminal signals reach it only via the guard."""
    os.setpgid(0, 0)
    from leaderrun import log as logs

    try:
        from leaderrun.supervisor import Supervisor

        return Supervisor(settings, GuardLink(info_w, life_r)).run()
    except LeaderrunError as exc:
        _fatal(settings, exc.message)
        return exc.exit_code
    except Exception:  # one line for the operator, details at -vv
        if settings.verbosity >= 2:
            log.error("internal error", exc_info=True)
        _fatal(settings, "internal error; run with -vv for details")
        return 70
    finally:
        logs.flush(1.0)
        sys.stderr.flush()
