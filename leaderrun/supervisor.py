"""The supervision state machine of `run`: campaign, run the child, stop it in time, release.

    CONNECTING -> CAMPAIGNING -> LEADING (child runs) -> STOPPING -> RELEASED -> exit
                      ^                                                  |
                      +------------------ --forever ---------------------+

Safety lives here and only here. While the child runs, the loop wakes for whichever comes
first: the child exits, a signal arrives, the backend reports leadership lost, or the moment
`t_ack + T - safety - kill_grace` — from which the child is stopped whether or not the backend
has said anything, so no process of it is alive when the server could expire the lease.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TypeVar, cast

from leaderrun import metrics, process
from leaderrun.backends import Backend, Candidate, Leadership, backend_class
from leaderrun.errors import BackendUnreachable, ExitCode, signal_exit_code
from leaderrun.log import event
from leaderrun.record import candidate_value, parse_value
from leaderrun.settings import Settings, Timing

log = logging.getLogger("leaderrun")
T = TypeVar("T")

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
BACKOFF_MAX = 30.0


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
        with contextlib.suppress(BlockingIOError):
            while os.read(self.read_fd, 512):
                pass
        taken, self.pending[:] = list(self.pending), []
        return taken


class Stop(Exception):
    """A stop signal (or the guard's death) ends `--forever` and everything else."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class StoreSilent(Exception):
    """The store did not answer a request before the term's safety deadline."""


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
        self.skipped = False
        self.command_path = ""
        self.elected_at = 0.0
        self.queued_at = 0.0
        self.backend: Backend

    # -- entry point --------------------------------------------------------------------------

    def run(self) -> int:
        self.signals.install()
        process.become_subreaper()
        if self.settings.metrics_addr:
            metrics.serve(self.settings.metrics_addr)
        self.command_path = process.resolve_command(self.settings.command)
        backend = backend_class(self.settings.backend.scheme)(self.settings)
        backend.on_waiting = self._on_waiting
        self.backend = backend
        try:
            if self.settings.forever:
                return self._run_forever(backend)
            return self._run_once(backend)
        except Stop as stop:
            return self._stop_exit_code(stop.signum)
        finally:
            backend.close()

    def _run_once(self, backend: Backend) -> int:
        self._connect(backend)
        leadership = self._campaign(backend)
        if leadership is None:
            if self.skipped:
                return self.settings.skip_exit_code
            raise Stop(self.stop_signal or signal.SIGTERM)
        return self._term(backend, leadership)

    def _run_forever(self, backend: Backend) -> int:
        """Daemon mode: campaign again after every term; only a stop signal ends it."""
        failures = 0
        while True:
            try:
                self._connect(backend)
                failures = 0
                leadership = self._campaign(backend)
                if leadership is None:
                    raise Stop(self.stop_signal or signal.SIGTERM)
                self._term(backend, leadership)
                if self.stop_signal is not None:
                    raise Stop(self.stop_signal)
                delay = self.settings.restart_delay
            except BackendUnreachable as exc:
                failures += 1
                delay = min(BACKOFF_MAX, self.settings.restart_delay * 2**failures)
                delay *= random.uniform(0.5, 1.0)
                log.warning("%s; retrying in %.1fs", exc.message, delay, extra=event("unreachable"))
                self._notify("backend unreachable")
            self._pause(delay)

    def _stop_exit_code(self, signum: int) -> int:
        if self.settings.forever and signum == signal.SIGTERM:
            return ExitCode.OK
        return signal_exit_code(signum)

    def _pause(self, seconds: float) -> None:
        """Wait between terms, but answer a stop signal at once."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select(self._wake_fds(), [], [], remaining)
            self._check_stop_while_idle(readable)

    # -- CONNECTING / CAMPAIGNING -------------------------------------------------------------

    def _connect(self, backend: Backend) -> None:
        log.debug("connecting to %s", self.settings.backend, extra=event("connecting"))
        backend.connect()

    def _campaign(self, backend: Backend) -> Leadership | None:
        """Queue up and wait to be elected; None if a signal, --no-wait or --wait-timeout
        ended the wait (the candidacy is then withdrawn)."""
        self.cancel = threading.Event()
        self.skipped = False
        log.info(
            "campaigning in %s as %s",
            self.settings.election_path,
            self.settings.identity,
            extra=event("campaigning"),
        )
        self._notify("campaigning", ready=True)
        metrics.IS_LEADER.labels(self.settings.election).set(0)
        self.queued_at = time.time()
        value = candidate_value(
            self.settings.identity, self.settings.command[0], self._leaderrun_pid(), self.queued_at
        )
        watcher = threading.Thread(target=self._watch_while_waiting, name="waiting", daemon=True)
        watcher.start()
        try:
            leadership = backend.campaign(value, self.cancel)
        finally:
            self.cancel.set()
            watcher.join()
        handle = backend.release_handle()
        if handle is not None:
            self.report({"event": "lease", "handle": dict(handle)})
        if leadership is None or self.stop_signal is not None:
            backend.resign()
            self.report({"event": "released"})
            if self.skipped:
                log.info("not elected; skipping", extra=event("skipped"))
            return None
        return leadership

    def _watch_while_waiting(self) -> None:
        """While waiting, SIGTERM/SIGINT withdraw the candidacy; other signals are ignored."""
        give_up_at = (
            time.monotonic() + self.settings.wait_timeout
            if self.settings.wait_timeout is not None
            else None
        )
        while not self.cancel.is_set():
            timeout = (
                0.2 if give_up_at is None else max(0.0, min(0.2, give_up_at - time.monotonic()))
            )
            readable, _, _ = select.select(self._wake_fds(), [], [], timeout)
            try:
                self._check_stop_while_idle(readable)
            except Stop as stop:
                self.stop_signal = stop.signum
                self.cancel.set()
                return
            if give_up_at is not None and time.monotonic() >= give_up_at:
                log.info("not elected within --wait-timeout", extra=event("wait_timeout"))
                self.skipped = True
                self.cancel.set()

    def _check_stop_while_idle(self, readable: list[int]) -> None:
        if self.parent_gone_fd is not None and self.parent_gone_fd in readable:
            raise Stop(signal.SIGKILL)
        for signum in self.signals.drain():
            if signum in STOP_SIGNALS:
                log.info(
                    "received %s; withdrawing", signal.Signals(signum).name, extra=event("signal")
                )
                raise Stop(signum)
            log.debug("ignoring %s while not leading", signal.Signals(signum).name)

    def _on_waiting(self, ahead: Candidate) -> None:
        if self.settings.no_wait:
            self.skipped = True
            self.cancel.set()
            return
        log.info(
            "waiting behind %s (token %d)", ahead.identity, ahead.token, extra=event("waiting")
        )
        self._notify(f"waiting behind {ahead.identity}")

    # -- LEADING ------------------------------------------------------------------------------

    def _term(self, backend: Backend, leadership: Leadership) -> int:
        """One term as leader: maybe skip (--once-per), run the child, record, release."""
        self.elected_at = time.time()
        metrics.IS_LEADER.labels(self.settings.election).set(1)
        metrics.TERMS.labels(self.settings.election).inc()
        log.info(
            "elected leader of %s with fencing token %d",
            self.settings.election_path,
            leadership.token,
            extra=event("elected", token=leadership.token),
        )
        self.report({"event": "lease", "handle": dict(backend.release_handle() or {})})
        try:
            if self._ran_recently(backend, leadership):
                self.skipped = True
                return self.settings.skip_exit_code
            if not self._still_safe_to_start(leadership):
                return ExitCode.LOST
            started = time.time()
            status = self._run_child(leadership)
            if status == 0 and self.settings.once_per is not None:
                self._record_run(backend, leadership, started)
            return status
        finally:
            self._release(backend)

    def _still_safe_to_start(self, leadership: Leadership) -> bool:
        """Between election and spawn the store was asked things; lead only if nothing was lost
        meanwhile and there is time left before the child would have to be stopped again."""
        timing = self._timing(leadership)
        if leadership.lost.is_set():
            reason = leadership.lost_reason
        elif time.monotonic() >= timing.stop_at(leadership.clock.deadline()):
            reason = "the lease is at risk (renewals failing)"
        else:
            return True
        log.warning(
            "leadership lost before the child started: %s; not starting it",
            reason,
            extra=event("lost", token=leadership.token),
        )
        return False

    def _ask_store(self, leadership: Leadership, call: Callable[[], T]) -> T:
        """A store request the term depends on, bounded by when the child would have to be
        stopped: a store that stops answering must not hold the term (or a child) past that."""
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = call()
            except Exception as exc:  # handed to the caller below
                box["error"] = exc

        worker = threading.Thread(target=target, name="store-request", daemon=True)
        worker.start()
        timing = self._timing(leadership)
        worker.join(max(0.0, timing.stop_at(leadership.clock.deadline()) - time.monotonic()))
        if worker.is_alive():
            leadership.lose("the store did not answer while the term was starting")
            raise StoreSilent()
        if "error" in box:
            raise box["error"]
        return cast(T, box["value"])

    def _run_child(self, leadership: Leadership) -> int:
        child = process.spawn(
            [self.command_path, *self.settings.command[1:]], self._child_env(leadership)
        )
        self.report({"event": "child", "pid": child.pid})
        metrics.CHILD_STARTS.labels(self.settings.election).inc()
        log.info(
            "started child pid %d: %s",
            child.pid,
            self.settings.command[0],
            extra=event("child_started", pid=child.pid, token=leadership.token),
        )
        self._notify(f"leader, child pid {child.pid}, token {leadership.token}")
        self._announce(leadership, child.pid)
        threading.Thread(
            target=self._wake_on_lost, args=(leadership,), name="lost-wake", daemon=True
        ).start()
        status = self._supervise(child, leadership)
        metrics.CHILD_EXITS.labels(self.settings.election, str(status)).inc()
        return status

    def _announce(self, leadership: Leadership, child_pid: int) -> None:
        """Show operators (`status`) the child's pid and since when we lead.

        Cosmetic, so it runs on its own thread: the supervision loop (and its deadline) must
        start at once, whatever the store does with this request.
        """
        threading.Thread(
            target=self._send_announcement, args=(leadership, child_pid), daemon=True
        ).start()

    def _send_announcement(self, leadership: Leadership, child_pid: int) -> None:
        value = candidate_value(
            self.settings.identity,
            self.settings.command[0],
            self._leaderrun_pid(),
            self.queued_at,
            leader_since=self.elected_at,
            child_pid=child_pid,
        )
        try:
            self.backend.announce(leadership, value)
        except Exception as exc:  # cosmetic: the child runs regardless
            log.debug("could not update our value for status: %s", exc)

    def _wake_on_lost(self, leadership: Leadership) -> None:
        leadership.lost.wait()
        with contextlib.suppress(OSError):
            os.write(self.lost_wake_w, b"!")

    def _supervise(self, child: process.Child, leadership: Leadership) -> int:
        """The LEADING loop. Returns the exit code once every process of the child is gone."""
        timing = self._timing(leadership)
        pidfd = os.pidfd_open(child.pid)
        stop_requested_at: float | None = None
        try:
            while True:
                status = child.exit_status()
                if status is not None:
                    log.info(
                        "child pid %d exited with status %d",
                        child.pid,
                        status,
                        extra=event("child_exited", pid=child.pid, status=status),
                    )
                    self._stop_leftovers(leadership)
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
                        extra=event("child_killed", pid=child.pid),
                    )
                    process.stop_everything(child, grace=0.0)
                    continue
                timeout = stop_at - now
                if stop_requested_at is not None:
                    timeout = min(timeout, stop_requested_at + timing.kill_grace - now)
                fds = [pidfd, self.lost_wake_r, *self._wake_fds()]
                readable, _, _ = select.select(fds, [], [], max(0.0, timeout))
                if self.parent_gone_fd is not None and self.parent_gone_fd in readable:
                    return self._parent_died(child)
                for signum in self.signals.drain():
                    log.info(
                        "forwarding %s to child pid %d",
                        signal.Signals(signum).name,
                        child.pid,
                        extra=event("signal", pid=child.pid),
                    )
                    child.send_signal(signum)
                    if signum in STOP_SIGNALS and stop_requested_at is None:
                        self.stop_signal = signum
                        stop_requested_at = time.monotonic()
        finally:
            os.close(pidfd)

    def _stop_leftovers(self, leadership: Leadership) -> None:
        """The child exited: stop what it left behind before anyone else may lead."""
        leftovers = process.live_descendants()
        if not leftovers:
            return
        log.warning(
            "child left %d process(es) running (%s); stopping them before releasing",
            len(leftovers),
            ", ".join(f"pid {p.pid}" for p in leftovers[:5]),
            extra=event("leftovers", count=len(leftovers)),
        )
        timing = self._timing(leadership)
        kill_by = timing.kill_by(leadership.clock.deadline())
        process.stop_everything(None, timing.kill_grace, kill_by=kill_by)

    def _stop_lost(self, child: process.Child, leadership: Leadership, reason: str) -> int:
        log.warning(
            "leadership lost: %s; stopping child pid %d",
            reason,
            child.pid,
            extra=event("lost", pid=child.pid, token=leadership.token),
        )
        timing = self._timing(leadership)
        process.stop_everything(
            child, timing.kill_grace, kill_by=timing.kill_by(leadership.clock.deadline())
        )
        log.warning(
            "child pid %d stopped after losing leadership (exit %d)",
            child.pid,
            ExitCode.LOST,
            extra=event("child_stopped", pid=child.pid),
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
            extra=event("at_risk", pid=child.pid, token=leadership.token),
        )
        process.stop_everything(child, timing.kill_grace, kill_by=timing.kill_by(deadline))
        margin = deadline - time.monotonic()
        log.warning(
            "child pid %d stopped %.2fs before the lease deadline (exit %d)",
            child.pid,
            margin,
            ExitCode.LOST,
            extra=event("child_stopped", pid=child.pid, margin=round(margin, 3)),
        )
        leadership.lose("lease at risk")
        return ExitCode.LOST

    def _parent_died(self, child: process.Child) -> int:
        """Our guard process was killed: nothing may outlive it, so kill, then release."""
        log.warning(
            "leaderrun's main process died; killing child pid %d and releasing",
            child.pid,
            extra=event("guard_died", pid=child.pid),
        )
        process.stop_everything(child, grace=0.0)
        self.stop_signal = signal.SIGKILL
        return signal_exit_code(signal.SIGKILL)

    def _release(self, backend: Backend) -> None:
        metrics.IS_LEADER.labels(self.settings.election).set(0)
        backend.resign()
        self.report({"event": "released"})
        log.info("released leadership of %s", self.settings.election_path, extra=event("released"))

    # -- --once-per ---------------------------------------------------------------------------

    def _ran_recently(self, backend: Backend, leadership: Leadership) -> bool:
        """True when a successful run of this election started less than --once-per ago."""
        if self.settings.once_per is None:
            return False
        try:
            raw = self._ask_store(leadership, backend.last_run)
        except StoreSilent:
            return False  # leadership is now lost: `_still_safe_to_start` refuses the term
        except Exception as exc:  # not knowing the record must not mean running
            leadership.lose(f"could not read the last-run record ({exc or type(exc).__name__})")
            return False
        document = parse_value(raw) if raw is not None else None
        if raw is not None and document is None:
            log.warning("ignoring a last-run record that leaderrun did not write: %r", raw[:60])
        if document is None or not isinstance(document.get("start"), int | float):
            return False
        age = time.time() - float(document["start"])
        if age >= self.settings.once_per:
            return False
        log.info(
            "skipping: %s started a successful run %.0fs ago (--once-per %gs)",
            document["id"],
            age,
            self.settings.once_per,
            extra=event("skipped", last_run_by=document["id"]),
        )
        return True

    def _record_run(self, backend: Backend, leadership: Leadership, started: float) -> None:
        record = {
            "v": 1,
            "id": self.settings.identity,
            "host": socket.gethostname(),
            "token": leadership.token,
            "start": started,
            "end": time.time(),
        }
        try:
            written = backend.record_run(leadership, json.dumps(record).encode())
        except Exception as exc:  # the run happened; say so, then release
            written = False
            log.warning("could not write the last-run record: %s", exc or type(exc).__name__)
        if not written:
            log.warning(
                "could not record the successful run: leadership was lost before it was written",
                extra=event("record_failed"),
            )

    # -- helpers ------------------------------------------------------------------------------

    def _wake_fds(self) -> list[int]:
        fds = [self.signals.read_fd]
        if self.parent_gone_fd is not None:
            fds.append(self.parent_gone_fd)
        return fds

    def _notify(self, status: str, ready: bool = False) -> None:
        """Tell the guard, which alone may speak to systemd (it is the unit's main pid)."""
        self.report({"event": "notify", "status": status, "ready": ready})

    def _timing(self, leadership: Leadership) -> Timing:
        """The timing rule applies to the TTL the server granted, not the one we asked for."""
        return self.settings.timing.with_granted_ttl(leadership.clock.ttl)

    def _child_env(self, leadership: Leadership) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in HIDDEN_ENV}
        if env.pop("LEADERRUN_GRPC_VERBOSITY_SET", None):
            env.pop("GRPC_VERBOSITY", None)
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
