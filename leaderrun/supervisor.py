"""The supervision state machine of `run`: campaign, run the child, stop it in time, release.

    CONNECTING -> CAMPAIGNING -> LEADING (child runs) -> STOPPING -> RELEASED -> exit

Safety lives here and only here. While the child runs, the loop wakes for whichever comes
first: the child exits, a signal arrives, the backend reports leadership lost, or the moment
`t_ack + T - safety - kill_grace` — from which the child is stopped whether or not the backend
has said anything, so no process of it is alive when the server could expire the lease.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from leaderrun import process
from leaderrun.backends import Backend, Candidate, Leadership, backend_class
from leaderrun.errors import ExitCode, LeaderrunError, signal_exit_code
from leaderrun.record import candidate_value
from leaderrun.settings import Settings, Timing

log = logging.getLogger("leaderrun")

FORWARDED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
HIDDEN_ENV = ("NOTIFY_SOCKET", "LEADERRUN_PASSWORD")


@dataclass
class Signals:
    """Signals received, drained by the main loop; a pipe wakes the loop when one arrives."""

    pending: list[int] = field(default_factory=list)
    read_fd: int = -1
    write_fd: int = -1

    def install(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for signum in FORWARDED_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.pending.append(signum)
        with contextlib.suppress(BlockingIOError):
            os.write(self.write_fd, b"!")

    def drain(self) -> list[int]:
        try:
            while os.read(self.read_fd, 512):
                pass
        except BlockingIOError:
            pass
        taken, self.pending[:] = list(self.pending), []
        return taken


class Supervisor:
    """Runs one `leaderrun run` inside the worker process (see `guard`)."""

    def __init__(
        self,
        settings: Settings,
        report: Callable[[dict[str, object]], None] = lambda event: None,
        parent_gone_fd: int | None = None,
    ) -> None:
        self.settings = settings
        self.report = report
        self.parent_gone_fd = parent_gone_fd
        self.signals = Signals()
        self.cancel = threading.Event()
        self.lost_wake_r, self.lost_wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.stop_signal: int | None = None
        self.backend: Backend | None = None

    # -- entry point --------------------------------------------------------------------------

    def run(self) -> int:
        self.signals.install()
        process.become_subreaper()
        command_path = process.resolve_command(self.settings.command)
        backend = backend_class(self.settings.backend.scheme)(self.settings)
        self.backend = backend
        backend.on_waiting = self._on_waiting
        try:
            log.info("connecting to %s", self.settings.backend)
            backend.connect()
            leadership = self._campaign(backend)
            if leadership is None:
                return self._exit_while_waiting()
            return self._lead(backend, leadership, command_path)
        finally:
            backend.close()

    # -- CAMPAIGNING --------------------------------------------------------------------------

    def _campaign(self, backend: Backend) -> Leadership | None:
        log.info(
            "campaigning in election %s as %s", self.settings.election_path, self.settings.identity
        )
        value = candidate_value(
            self.settings.identity, self.settings.command[0], self._leaderrun_pid()
        )
        watcher = threading.Thread(
            target=self._watch_while_waiting, name="wait-signals", daemon=True
        )
        watcher.start()
        try:
            leadership = backend.campaign(value, self.cancel)
        finally:
            self.cancel.set()
            watcher.join()
        handle = backend.release_handle()
        if handle is not None:
            self.report({"event": "lease", "handle": dict(handle)})
        if leadership is not None and self.stop_signal is not None:
            backend.resign()
            return None
        return leadership

    def _watch_while_waiting(self) -> None:
        """While waiting, SIGTERM/SIGINT withdraw the candidacy; other signals are ignored."""
        fds = [self.signals.read_fd] + (
            [self.parent_gone_fd] if self.parent_gone_fd is not None else []
        )
        while not self.cancel.is_set():
            readable, _, _ = select.select(fds, [], [], 0.2)
            if self.parent_gone_fd in readable:
                self.stop_signal = signal.SIGKILL
                self.cancel.set()
                return
            for signum in self.signals.drain():
                if signum in STOP_SIGNALS:
                    log.info("received %s while waiting; withdrawing", signal.Signals(signum).name)
                    self.stop_signal = signum
                    self.cancel.set()
                    return
                log.debug("ignoring %s while waiting", signal.Signals(signum).name)

    def _exit_while_waiting(self) -> int:
        assert self.backend is not None
        self.backend.resign()
        self.report({"event": "released"})
        signum = self.stop_signal or signal.SIGTERM
        return signal_exit_code(signum)

    def _on_waiting(self, ahead: Candidate) -> None:
        log.info("waiting behind %s (token %d)", ahead.identity, ahead.token)

    # -- LEADING ------------------------------------------------------------------------------

    def _lead(self, backend: Backend, leadership: Leadership, command_path: str) -> int:
        log.info(
            "elected leader of %s with fencing token %d",
            self.settings.election_path,
            leadership.token,
        )
        self.report({"event": "lease", "handle": dict(backend.release_handle() or {})})
        try:
            child = process.spawn(
                [command_path, *self.settings.command[1:]], self._child_env(leadership)
            )
        except LeaderrunError:
            self._release(backend)
            raise
        self.report({"event": "child", "pid": child.pid})
        log.info("started child pid %d: %s", child.pid, self.settings.command[0])
        watch_lost = threading.Thread(
            target=self._wake_on_lost, args=(leadership,), name="lost-wake", daemon=True
        )
        watch_lost.start()
        outcome = self._supervise(child, leadership)
        self._release(backend)
        return outcome

    def _wake_on_lost(self, leadership: Leadership) -> None:
        leadership.lost.wait()
        os.write(self.lost_wake_w, b"!")

    def _supervise(self, child: process.Child, leadership: Leadership) -> int:
        """The LEADING loop. Returns the exit code once every process of the child is gone."""
        timing = self._timing(leadership)
        pidfd = os.pidfd_open(child.pid)
        fds = [pidfd, self.signals.read_fd, self.lost_wake_r]
        if self.parent_gone_fd is not None:
            fds.append(self.parent_gone_fd)
        stop_requested_at: float | None = None
        try:
            while True:
                status = child.exit_status()
                if status is not None:
                    log.info("child pid %d exited with status %d", child.pid, status)
                    self._stop_leftovers(child, leadership)
                    return status
                if leadership.lost.is_set():
                    return self._stop_lost(child, leadership, leadership.lost_reason)
                now = time.monotonic()
                stop_at = timing.stop_at(leadership.clock.deadline())
                if now >= stop_at:
                    return self._stop_at_risk(child, leadership)
                if stop_requested_at is not None and now >= stop_requested_at + timing.kill_grace:
                    log.warning(
                        "child pid %d still running %.1fs after %s; killing it",
                        child.pid,
                        timing.kill_grace,
                        signal.Signals(self.stop_signal or signal.SIGTERM).name,
                    )
                    process.stop_everything(child, grace=0.0)
                    continue
                timeout = stop_at - now
                if stop_requested_at is not None:
                    timeout = min(timeout, stop_requested_at + timing.kill_grace - now)
                readable, _, _ = select.select(fds, [], [], max(0.0, timeout))
                if self.parent_gone_fd is not None and self.parent_gone_fd in readable:
                    return self._parent_died(child)
                for signum in self.signals.drain():
                    log.info(
                        "forwarding %s to child pid %d", signal.Signals(signum).name, child.pid
                    )
                    child.send_signal(signum)
                    if signum in STOP_SIGNALS and stop_requested_at is None:
                        self.stop_signal = signum
                        stop_requested_at = time.monotonic()
        finally:
            os.close(pidfd)

    def _stop_leftovers(self, child: process.Child, leadership: Leadership) -> None:
        """The child exited: stop what it left behind before anyone else may lead."""
        leftovers = process.live_descendants()
        if not leftovers:
            return
        log.warning(
            "child left %d process(es) running (%s); stopping them before releasing",
            len(leftovers),
            ", ".join(f"pid {p.pid}" for p in leftovers[:5]),
        )
        timing = self._timing(leadership)
        kill_by = timing.kill_by(leadership.clock.deadline())
        process.stop_everything(None, timing.kill_grace, kill_by=kill_by)

    def _stop_lost(self, child: process.Child, leadership: Leadership, reason: str) -> int:
        log.warning("leadership lost: %s; stopping child pid %d", reason, child.pid)
        timing = self._timing(leadership)
        kill_by = timing.kill_by(leadership.clock.deadline())
        process.stop_everything(child, timing.kill_grace, kill_by=kill_by)
        log.warning(
            "child pid %d stopped after losing leadership (exit %d)", child.pid, ExitCode.LOST
        )
        return ExitCode.LOST

    def _stop_at_risk(self, child: process.Child, leadership: Leadership) -> int:
        timing = self._timing(leadership)
        deadline = leadership.clock.deadline()
        log.warning(
            "lease renewal failing for %.1fs; stopping child pid %d (lease may expire in %.1fs)",
            leadership.clock.since_ack(),
            child.pid,
            deadline - time.monotonic(),
        )
        process.stop_everything(child, timing.kill_grace, kill_by=timing.kill_by(deadline))
        dead_at = time.monotonic()
        log.warning(
            "child pid %d stopped %.2fs before the lease deadline (exit %d)",
            child.pid,
            deadline - dead_at,
            ExitCode.LOST,
        )
        leadership.lose("lease at risk")
        return ExitCode.LOST

    def _parent_died(self, child: process.Child) -> int:
        """Our guard process was killed: nothing may outlive it, so kill, then release."""
        log.warning("leaderrun's main process died; killing child pid %d and releasing", child.pid)
        process.stop_everything(child, grace=0.0)
        return signal_exit_code(signal.SIGKILL)

    def _release(self, backend: Backend) -> None:
        backend.resign()
        self.report({"event": "released"})
        log.info("released leadership of %s", self.settings.election_path)

    # -- helpers ------------------------------------------------------------------------------

    def _timing(self, leadership: Leadership) -> Timing:
        """The timing rule applies to the TTL the server granted, not the one we asked for."""
        return self.settings.timing.with_granted_ttl(leadership.clock.ttl)

    def _child_env(self, leadership: Leadership) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in HIDDEN_ENV}
        env.update(
            LEADERRUN_ELECTION=self.settings.election,
            LEADERRUN_ID=self.settings.identity,
            LEADERRUN_FENCING_TOKEN=str(leadership.token),
            LEADERRUN_BACKEND=str(self.settings.backend),
            LEADERRUN_LEASE_TTL=f"{leadership.clock.ttl:g}",
        )
        return env

    def _leaderrun_pid(self) -> int:
        return os.getppid() if self.parent_gone_fd is not None else os.getpid()
