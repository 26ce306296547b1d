"""The supervision state machine of `run` (the worker process): campaign, lead, stop, release.

    CONNECTING -> CAMPAIGNING -> LEADING (child runs) -> STOPPING -> RELEASED -> exit
                      ^                                                  |
                      +------------------ --forever ---------------------+

One loop, one place it waits (`events.wait`): signals, the store's news (a renewal answered,
the term lost: the backend's threads poke a pipe), the child's pidfd, the pidfds of what it
left behind, the guard's death. The only timeouts are this term's own deadlines, computed by
`TermPlan` from the lease clock. Safety comes first in every pass: from
`t_ack + T - safety - kill_grace` on the child is stopped, whatever else is going on, and the
guard process holds the same deadline in case this process stalls.

Nothing on the path between a deadline and the kill can block: log lines go to a bounded
queue (`leaderrun.log`), reports to the guard are non-blocking writes, store requests run on
threads and are awaited in the loop.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from leaderrun import events, metrics, process
from leaderrun.backends import (
    OUTCOME_TIMEOUT,
    Backend,
    Cancelled,
    Candidate,
    Flag,
    Term,
    backend_class,
)
from leaderrun.errors import (
    BackendUnreachable,
    CommandNotExecutable,
    CommandNotFound,
    ExitCode,
    signal_exit_code,
)
from leaderrun.guard import GuardLink
from leaderrun.log import event
from leaderrun.record import candidate_value, outcome_record, parse_value
from leaderrun.settings import KILL_LEAD, Settings, Timing

log = logging.getLogger("leaderrun")
T = TypeVar("T")

HIDDEN_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LEADERRUN_PASSWORD")
BACKOFF_MAX = 30.0
#: How long a cancelled store call may take to notice (its in-flight request times out).
CANCEL_GRACE = 2.5


class Stop(Exception):
    """A stop signal (or the guard's death) ends `--forever` and everything else."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class StoreSilent(Exception):
    """The store did not answer a request before the term's stop point."""


class Action(Enum):
    """What the LEADING loop must do now (`TermPlan.decide`)."""

    WAIT = "wait"
    AT_RISK = "at_risk"  # the deadline came: stop everything, exit 75
    LOST = "lost"  # the store said the term is over: stop everything, exit 75
    HANDOVER = "handover"  # `step-down` asked: stop everything as at a normal end, exit 75
    KILL = "kill"  # the grace period is over: SIGKILL what is left
    DONE = "done"  # nothing of the term is left: release


@dataclass
class TermPlan:
    """The deadline arithmetic of one term, kept free of I/O so a fake clock can drive it.

    `decide` is called on every wake-up with what is known now and returns the one action to
    take; `wake_at` says when the loop must wake up if nothing else happens first.
    """

    timing: Timing
    #: The exit code, once decided: the child's status, or 75 once the term is over.
    outcome: int | None = None
    #: A stop signal was forwarded: the child may end by itself until `kill_at`.
    forwarded_stop: bool = False
    kill_at: float | None = None
    killed_at: float | None = None

    def decide(
        self,
        now: float,
        lease_deadline: float,
        lost: bool,
        tree_alive: bool,
        handover: bool = False,
        lapsed: bool = False,
    ) -> Action:
        """`lapsed`: the clock passed the stop point at some moment, even if a renewal answered
        later has moved the deadline on since (see `LeaseClock.lapsed`)."""
        at_risk = lapsed or now >= self.timing.stop_at(lease_deadline)
        if self.outcome != ExitCode.LOST and not self._stopping_by_signal():
            if at_risk:
                # A term past its deadline never keeps its child, nor reports a status that
                # the guard's kill (while this process was stopped) may have caused.
                return Action.AT_RISK
            if lost and tree_alive:
                return Action.LOST
            if handover and tree_alive and self.outcome is None:
                return Action.HANDOVER
        if not tree_alive and self.outcome is not None:
            return Action.DONE
        if self.kill_at is not None and now >= self.kill_at and self.killed_at is None:
            return Action.KILL
        if self.killed_at is not None and now >= self.killed_at + self.timing.kill_grace:
            return Action.KILL  # survivors of SIGKILL: sweep again, and say so
        return Action.WAIT

    def _stopping_by_signal(self) -> bool:
        """A forwarded SIGTERM is already bringing the child down within a kill time that the
        deadline bounds (see `stop`), so losing the term changes nothing but the log."""
        return self.forwarded_stop and self.outcome is None

    def stop(self, now: float, lease_deadline: float, outcome: int | None = None) -> None:
        """Stopping begins now: SIGKILL after the kill grace, or earlier if the lease demands.

        The lease deadline only moves later, so a kill time set now stays ahead of it.
        """
        if outcome is not None:
            self.outcome = outcome
        kill_at = min(now + self.timing.kill_grace, self.timing.kill_by(lease_deadline))
        if self.kill_at is None or kill_at < self.kill_at:
            self.kill_at = kill_at

    def killed(self, now: float) -> None:
        self.killed_at = now

    def wake_at(self, lease_deadline: float) -> float | None:
        """The next moment the loop must act by itself."""
        moments = []
        if self.outcome != ExitCode.LOST:
            moments.append(self.timing.stop_at(lease_deadline))
        if self.kill_at is not None and self.killed_at is None:
            moments.append(self.kill_at)
        if self.killed_at is not None:
            moments.append(self.killed_at + self.timing.kill_grace)
        return min(moments) if moments else None


class Supervisor:
    """Runs one `leaderrun run` inside the worker process (see `guard`)."""

    def __init__(self, settings: Settings, guard: GuardLink | None = None) -> None:
        self.settings = settings
        self.guard = guard or GuardLink()
        self.wakeup = events.Wakeup()
        self.inbox: events.SignalInbox | None = None
        self.stop_signal: int | None = None
        self.skipped = False
        self.command_path = ""
        self.queued_at = 0.0
        self.elected_at = 0.0
        self.term: Term | None = None
        self.cancel = Flag()
        #: When this term began handing over to `step-down` (monotonic), if it did.
        self.handover_started: float | None = None
        #: `/healthz` pokes `pings`; the loop answers by setting `pong` wherever it waits.
        self.child_started_at = 0.0
        #: The child's own status once its term's tree is gone (for the outcome record).
        self.child_status: int | None = None
        self.pings = events.Wakeup()
        self.pong = threading.Event()
        self.role = "starting"
        self.backend: Backend

    # -- entry point --------------------------------------------------------------------------

    def run(self) -> int:
        self.inbox = events.SignalInbox()
        process.become_subreaper()
        if self.settings.metrics_addr:
            metrics.health_probe = self._answer_health_probe
            metrics.leader_view = self._leader_view
            metrics.serve(
                self.settings.metrics_addr, self.settings.election, self.settings.max_holders
            )
        self.command_path = process.resolve_command(self.settings.command)
        backend = backend_class(self.settings.backend.scheme)(self.settings)
        backend.on_waiting = self._on_waiting
        backend.on_term_change = self._on_term_change
        backend.on_queued = self._on_queued
        self.backend = backend
        try:
            if self.settings.forever:
                return self._run_forever()
            return self._run_once()
        except Stop as stop:
            return self._stop_exit_code(stop.signum)
        finally:
            backend.close()

    def _run_once(self) -> int:
        self._connect()
        term = self._campaign()
        if term is None:
            if self.skipped:
                return self.settings.skip_exit_code
            raise Stop(self.stop_signal or signal.SIGTERM)
        return self._term(term)

    def _run_forever(self) -> int:
        """Daemon mode: campaign again after every term; only a stop signal ends it."""
        failures = 0
        while True:
            try:
                self._connect()
                failures = 0
                term = self._campaign()
                if term is None:
                    raise Stop(self.stop_signal or signal.SIGTERM)
                self._term(term)
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

    # -- waiting outside a term ---------------------------------------------------------------

    def _idle_fds(self) -> list[int]:
        assert self.inbox is not None
        fds = [self.inbox.fd, self.pings.fd]
        if self.guard.gone_fd is not None:
            fds.append(self.guard.gone_fd)
        return fds

    def _check_idle(self, ready: set[int]) -> int | None:
        """While not leading: the stop signal that arrived, if any (others are ignored)."""
        assert self.inbox is not None
        if self._guard_gone(ready):
            return signal.SIGKILL
        if self.inbox.fd in ready:
            for signum in self.inbox.take():
                if signum in events.STOP_SIGNALS:
                    return signum
        return None

    def _pause(self, seconds: float) -> None:
        """Wait between terms, but answer a stop signal at once."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            signum = self._check_idle(events.wait(self._idle_fds(), until))
            if signum is not None:
                raise Stop(signum)

    def _await(
        self,
        call: Callable[[], T],
        cancel: Flag,
        give_up_at: float | None = None,
        on_give_up: Callable[[], None] = lambda: None,
        grace: float = CANCEL_GRACE,
    ) -> T:
        """Run a blocking store call on a thread and wait for it here, where signals, the
        guard's death and `give_up_at` still end the wait: they set `cancel`, and the call
        returns (or raises Cancelled) as soon as its in-flight request is over; a call still
        running `grace` seconds later is left behind (Cancelled)."""
        done = events.Wakeup()
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = call()
            except BaseException as exc:  # handed to the caller below
                box["error"] = exc
            finally:
                done.poke()

        thread = threading.Thread(target=target, name="store-call", daemon=True)
        thread.start()
        cancelled_at: float | None = None
        try:
            while thread.is_alive():
                until = give_up_at if cancelled_at is None else cancelled_at + grace
                ready = events.wait([done.fd, *self._idle_fds()], until)
                signum = self._check_idle(ready)
                if signum is not None and self.stop_signal is None:
                    self.stop_signal = signum
                    cancel.set()
                if give_up_at is not None and time.monotonic() >= give_up_at:
                    give_up_at = None
                    on_give_up()
                    cancel.set()
                if cancel.is_set() and cancelled_at is None:
                    cancelled_at = time.monotonic()
                if cancelled_at is not None and time.monotonic() >= cancelled_at + grace:
                    raise Cancelled()  # a request stuck past its own deadline: leave it
            thread.join()
        finally:
            done.close()
        if "error" in box:
            raise box["error"]
        return box["value"]  # type: ignore[no-any-return]

    # -- CONNECTING / CAMPAIGNING -------------------------------------------------------------

    def _connect(self) -> None:
        log.debug("connecting to %s", self.settings.backend, extra=event("connecting"))
        cancel = Flag()
        try:
            self._await(lambda: self.backend.connect(cancel), cancel)
        except Cancelled:
            raise Stop(self.stop_signal or signal.SIGTERM) from None

    def _campaign(self) -> Term | None:
        """Queue up and wait to be elected; None if a signal, --no-wait or --wait-timeout
        ended the wait (the backend has then withdrawn the candidacy)."""
        self.skipped = False
        log.info(
            "campaigning in %s as %s",
            self.settings.election_path,
            self.settings.identity,
            extra=event("campaigning"),
        )
        self._notify("campaigning", ready=True)
        metrics.set_leader(self.settings.election, False)
        self.role = "waiting"
        self.queued_at = time.time()
        value = candidate_value(
            self.settings.identity,
            self.settings.command[0],
            self.guard.leaderrun_pid(),
            self.queued_at,
            **self._holders_field(),
        )
        self.cancel = cancel = Flag()
        give_up_at = (
            time.monotonic() + self.settings.wait_timeout
            if self.settings.wait_timeout is not None
            else None
        )
        try:
            term = self._await(
                lambda: self.backend.campaign(value, cancel),
                cancel,
                give_up_at,
                on_give_up=self._skip,
            )
        except Cancelled:
            term = None
        if term is not None and self.stop_signal is not None:
            self._release(term)
            term = None
        if term is None:
            self.guard.send("released")
            if self.skipped:
                log.info("not elected; skipping", extra=event("skipped"))
        return term

    def _skip(self) -> None:
        self.skipped = True

    def _on_queued(self, term: Term) -> None:
        """A new lease/session exists: the guard must be able to release it if we die."""
        self.guard.send("queued", handle=term.handle)

    def _on_waiting(self, ahead: Candidate) -> None:
        if self.settings.no_wait:
            self.skipped = True
            self.cancel.set()
            return
        log.info(
            "waiting behind %s (token %d)", ahead.identity, ahead.token, extra=event("waiting")
        )
        self._notify(f"waiting behind {ahead.identity}")

    def _on_term_change(self) -> None:
        """From the backend's threads: a renewal was answered or the term was lost. The guard
        gets the new deadline at once, from here, so a stalled loop cannot delay it."""
        term = self.term
        if term is not None and term.elected:
            self._send_deadline(term)
        self.wakeup.poke()

    def _send_deadline(self, term: Term) -> None:
        """The guard's copy of the deadline: its SIGKILL goes out half a KILL_LEAD after ours
        (so a healthy worker has always acted first) and still that long before the point the
        timing rule names, for the kernel to tear the processes down."""
        timing = self._timing(term)
        kill = timing.kill_by(term.clock.deadline()) + KILL_LEAD / 2
        self.guard.send("deadline", stop=kill - timing.kill_grace, kill=kill)

    # -- LEADING ------------------------------------------------------------------------------

    def _term(self, term: Term) -> int:
        """One term as leader: maybe skip (--once-per), run the child, record, release."""
        self.term = term
        self.handover_started = None
        self.elected_at = time.time()
        self.role = "leader"
        metrics.set_leader(self.settings.election, True, term.token, term.clock.ttl, term.slot)
        if self.settings.max_holders > 1:
            log.info(
                "holding slot %d of %d in %s with fencing token %d",
                term.slot,
                self.settings.max_holders,
                self.settings.election_path,
                term.token,
                extra=event("elected", token=term.token, slot=term.slot),
            )
        else:
            log.info(
                "elected leader of %s with fencing token %d",
                self.settings.election_path,
                term.token,
                extra=event("elected", token=term.token),
            )
        outcome: bytes | None = None
        try:
            if self._ran_recently(term):
                self.skipped = True
                return self.settings.skip_exit_code
            if self.stop_signal is not None:
                raise Stop(self.stop_signal)
            if not self._still_safe_to_start(term):
                return ExitCode.LOST
            started = time.time()
            try:
                status = self._lead(term)
            except (CommandNotFound, CommandNotExecutable) as exc:
                # The exec failed (e.g. a script without #!): a run too, of no time, 126/127.
                outcome = self._outcome_record(term, started, 0.0, int(exc.exit_code), "exited")
                raise
            outcome = self._outcome(term, started, status)
            if status == 0 and self.settings.once_per is not None:
                self._record_run(term, started)
            return status
        finally:
            self._release(term)
            self.term = None
            if outcome is not None:
                self._record_outcome(term, outcome)

    def _still_safe_to_start(self, term: Term) -> bool:
        """Between election and spawn the store was asked things; lead only if nothing was lost
        meanwhile and there is time left before the child would have to be stopped again."""
        if term.lost.is_set():
            reason = term.lost_reason
        elif term.handover_by:
            self.handover_started = time.monotonic()
            reason = f"{term.handover_by} asked it to step down"
        elif time.monotonic() >= self._timing(term).stop_at(term.clock.deadline()):
            reason = "the lease is at risk (renewals failing)"
        else:
            return True
        log.warning(
            "leadership lost before the child started: %s; not starting it",
            reason,
            extra=event("lost", token=term.token),
        )
        return False

    def _ask_store(self, term: Term, call: Callable[[], T]) -> T:
        """A store request the term depends on, bounded by when the child would have to be
        stopped: a store that stops answering must not hold the term (or a child) past that."""
        stop_at = self._timing(term).stop_at(term.clock.deadline())

        def silent() -> None:
            term.lose("the store did not answer while the term was starting")

        try:
            return self._await(call, Flag(), give_up_at=stop_at, on_give_up=silent, grace=0.0)
        except Cancelled:
            raise StoreSilent() from None

    def _lead(self, term: Term) -> int:
        """Start the child, supervise it, and return its exit code once its whole tree is gone."""
        term.clock.guard(self._timing(term).stop_margin)
        self._send_deadline(term)
        cgroup = process.Cgroup.create(f"{os.getpid()}-{term.token}")
        child = process.spawn(
            [self.command_path, *self.settings.command[1:]], self._child_env(term), cgroup
        )
        self.child_started_at = time.monotonic()
        self.guard.send("child", pid=child.pid, cgroup=cgroup.path if cgroup else None)
        metrics.child_started(self.settings.election)
        log.info(
            "started child pid %d: %s",
            child.pid,
            self.settings.command[0],
            extra=event("child_started", pid=child.pid, token=term.token),
        )
        self._notify(f"leader, child pid {child.pid}, token {term.token}")
        self._announce(term, child.pid)
        try:
            status = self._supervise(child, term)
        finally:
            child.close()
        self.guard.send("tree_gone")
        own_status = child.exit_status()
        self.child_status = own_status
        metrics.child_exited(self.settings.election, status if own_status is None else own_status)
        return status

    def _supervise(self, child: process.Child, term: Term) -> int:
        """The LEADING loop: one decision per wake-up (see `TermPlan`)."""
        assert self.inbox is not None
        timing = self._timing(term)
        plan = TermPlan(timing)
        watched: dict[int, int] = {}  # pidfd -> pid of a leftover we wait for
        try:
            while True:
                now = time.monotonic()
                deadline = term.clock.deadline()
                status = child.exit_status()
                survivors = self._survivors(child, status, watched)
                tree_alive = status is None or bool(survivors)
                action = plan.decide(
                    now,
                    deadline,
                    term.lost.is_set(),
                    tree_alive,
                    bool(term.handover_by),
                    term.clock.lapsed,
                )
                if action in (Action.AT_RISK, Action.LOST, Action.HANDOVER):
                    self._begin_stop(child, term, plan, action, now, deadline)
                    continue
                if action is Action.KILL:
                    self._kill(child, plan, now)
                    continue
                if action is Action.DONE:
                    return self._finish(child, term, plan)
                if status is not None and plan.outcome is None:
                    plan.outcome = status
                    self._child_exited(child, status, survivors)
                    if not survivors:  # not at risk (decided above): the common, fast end
                        return self._finish(child, term, plan)
                    plan.stop(now, deadline)
                    self._signal(child, signal.SIGTERM)
                    continue
                fds = [*self._idle_fds(), self.wakeup.fd, *watched]
                if status is None:
                    fds.append(child.pidfd)
                ready = events.wait(fds, plan.wake_at(deadline))
                self.wakeup.drain()
                self._handle_inputs(ready, child, term, plan)
        finally:
            for fd in watched:
                os.close(fd)

    def _survivors(
        self, child: process.Child, status: int | None, watched: dict[int, int]
    ) -> list[int]:
        """What the child left behind, once it exited; each is watched through a pidfd so its
        end wakes the loop (a /proc scan happens only then, not on a timer)."""
        if status is None:
            return []
        survivors = process.leftovers(child)
        for fd in list(watched):
            os.close(fd)
            del watched[fd]
        watched.update(process.watch_fds(survivors))
        return survivors

    def _handle_inputs(
        self, ready: set[int], child: process.Child, term: Term, plan: TermPlan
    ) -> None:
        assert self.inbox is not None
        if self._guard_gone(ready):
            self._guard_died(child, plan)
        if self.inbox.fd in ready:
            for signum in self.inbox.take():
                self._forward(child, signum, term, plan)

    def _forward(self, child: process.Child, signum: int, term: Term, plan: TermPlan) -> None:
        child.send_signal(signum)
        log.info(
            "forwarded %s to child pid %d",
            signal.Signals(signum).name,
            child.pid,
            extra=event("signal", pid=child.pid),
        )
        if signum in events.STOP_SIGNALS and self.stop_signal is None:
            # Stop means stop: SIGKILL follows after the kill grace if the child ignores it.
            self.stop_signal = signum
            plan.forwarded_stop = True
            plan.stop(time.monotonic(), term.clock.deadline())

    def _begin_stop(
        self,
        child: process.Child,
        term: Term,
        plan: TermPlan,
        action: Action,
        now: float,
        deadline: float,
    ) -> None:
        """The term is over (deadline or the store said so): SIGTERM first, then say why."""
        plan.stop(now, deadline, ExitCode.LOST)
        self.guard.send("stopping")
        self._signal(child, signal.SIGTERM)  # SIGKILL follows from the loop when due
        if action is Action.HANDOVER:
            self.handover_started = now
            log.warning(
                "stepping down as asked by %s; stopping child pid %d before handing over",
                term.handover_by,
                child.pid,
                extra=event("step_down", pid=child.pid, token=term.token, by=term.handover_by),
            )
        elif action is Action.AT_RISK and term.clock.lapsed:
            log.warning(
                "a lease renewal was answered only after the stop point (was leaderrun stalled "
                "or starved?); stopping child pid %d, the term is over",
                child.pid,
                extra=event("at_risk", pid=child.pid, token=term.token),
            )
            term.lose("lease renewed only after the stop point")
        elif action is Action.AT_RISK:
            log.warning(
                "lease renewal failing for %.1fs; stopping child pid %d (lease may expire in "
                "%.1fs)",
                term.clock.since_ack(),
                child.pid,
                deadline - now,
                extra=event("at_risk", pid=child.pid, token=term.token),
            )
            term.lose("lease at risk")
        else:
            log.warning(
                "leadership lost: %s; stopping child pid %d",
                term.lost_reason,
                child.pid,
                extra=event("lost", pid=child.pid, token=term.token),
            )

    def _kill(self, child: process.Child, plan: TermPlan, now: float) -> None:
        sweep = self._signal(child, signal.SIGKILL)
        first = plan.killed_at is None
        plan.killed(now)
        if sweep.refused:
            log.error(
                "cannot kill pid(s) %s of the child (%s); keeping leadership until they are gone",
                ", ".join(map(str, sweep.refused[:5])),
                "permission denied: started under another user?",
                extra=event("unkillable", pids=sweep.refused[:20]),
            )
        elif first and sweep.signalled:
            log.warning(
                "killed %d process(es) of the child with SIGKILL",
                len(sweep.signalled),
                extra=event("child_killed", count=len(sweep.signalled)),
            )

    def _signal(self, child: process.Child, signum: int) -> process.Sweep:
        return process.signal_tree(child, signum)

    def _child_exited(self, child: process.Child, status: int, survivors: list[int]) -> None:
        took = time.monotonic() - self.child_started_at
        fields = event("child_exited", pid=child.pid, status=status, seconds=round(took, 3))
        if status == 0:
            log.info("child pid %d exited with status 0 after %.1fs", child.pid, took, extra=fields)
        else:
            # One line at the default verbosity, so cron mails a failed job (SPEC §5).
            log.warning("job exited with status %d after %.1f s", status, took, extra=fields)
        if survivors:
            log.warning(
                "child left %d process(es) running (%s); stopping them before releasing",
                len(survivors),
                ", ".join(f"pid {pid}" for pid in survivors[:5]),
                extra=event("leftovers", count=len(survivors)),
            )

    def _finish(self, child: process.Child, term: Term, plan: TermPlan) -> int:
        assert plan.outcome is not None
        if self.handover_started is not None:
            return plan.outcome
        if plan.outcome == ExitCode.LOST:
            margin = term.clock.deadline() - time.monotonic()
            log.warning(
                "child pid %d stopped %.2fs before the lease deadline (exit %d)",
                child.pid,
                margin,
                ExitCode.LOST,
                extra=event("child_stopped", pid=child.pid, margin=round(margin, 3)),
            )
        return plan.outcome

    def _guard_died(self, child: process.Child, plan: TermPlan) -> None:
        """Our guard process was killed: nothing may outlive it, so kill, then release."""
        self.stop_signal = signal.SIGKILL
        self._signal(child, signal.SIGKILL)
        now = time.monotonic()
        plan.outcome = signal_exit_code(signal.SIGKILL)
        plan.kill_at = now
        plan.killed(now)
        self.guard.gone_fd = None  # seen; the loop goes on until the tree is gone
        log.warning(
            "leaderrun's main process died; killed child pid %d and releasing",
            child.pid,
            extra=event("guard_died", pid=child.pid),
        )

    def _announce(self, term: Term, child_pid: int) -> None:
        """Show operators (`status`) the child's pid and since when we lead. Cosmetic, so on a
        thread of its own: the loop (and its deadline) starts at once."""
        value = candidate_value(
            self.settings.identity,
            self.settings.command[0],
            self.guard.leaderrun_pid(),
            self.queued_at,
            leader_since=self.elected_at,
            child_pid=child_pid,
            **self._holders_field(term),
        )

        def send() -> None:
            try:
                self.backend.announce(term, value)
            except Exception as exc:  # cosmetic: the child runs regardless
                log.debug("could not update our value for status: %s", exc)

        threading.Thread(target=send, name="announce", daemon=True).start()

    def _release(self, term: Term) -> None:
        self.role = "released"
        metrics.set_leader(self.settings.election, False)
        try:
            released = self.backend.resign(term)
        except Exception as exc:  # the lease/session expires by itself
            released = False
            log.warning("could not release leadership: %s", exc)
        self.guard.send("released")
        if released and self.handover_started is not None:
            log.warning(
                "handed over %s after %.2fs, as %s asked",
                self.settings.election_path,
                time.monotonic() - self.handover_started,
                term.handover_by,
                extra=event("handed_over", token=term.token, by=term.handover_by),
            )
        elif released:
            log.info(
                "released leadership of %s", self.settings.election_path, extra=event("released")
            )

    # -- --once-per ---------------------------------------------------------------------------

    def _ran_recently(self, term: Term) -> bool:
        """True when a successful run of this election started less than --once-per ago."""
        if self.settings.once_per is None:
            return False
        try:
            raw = self._ask_store(term, self.backend.last_run)
        except StoreSilent:
            return False  # the term is now lost: `_still_safe_to_start` refuses it
        except Exception as exc:  # not knowing the record must not mean running
            term.lose(f"could not read the last-run record ({exc or type(exc).__name__})")
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

    def _record_run(self, term: Term, started: float) -> None:
        record = {
            "v": 1,
            "id": self.settings.identity,
            "host": socket.gethostname(),
            "token": term.token,
            "start": started,
            "end": time.time(),
        }
        try:
            written = self.backend.record_run(term, json.dumps(record).encode())
        except Exception as exc:  # the run happened; say so, then release
            written = False
            log.warning("could not write the last-run record: %s", exc or type(exc).__name__)
        if not written:
            log.warning(
                "could not record the successful run: leadership was lost before it was written",
                extra=event("record_failed"),
            )

    # -- every run's outcome (`status`) -------------------------------------------------------

    def _outcome(self, term: Term, started: float, status: int) -> bytes:
        """What this run ended with, built before the release (while `term.lost` still tells
        a lost term from a released one), written after it (`_record_outcome`)."""
        if self.handover_started is not None:
            ended = "stepped-down"
        elif status == ExitCode.LOST and term.lost.is_set():
            ended = "lost"
        elif self.stop_signal == signal.SIGKILL:
            ended = "killed"  # our guard died: the child was killed
        elif self.stop_signal is not None:
            ended = "stopped"
        else:
            ended = "exited"
        own = status if self.child_status is None else self.child_status
        return self._outcome_record(
            term, started, time.monotonic() - self.child_started_at, own, ended
        )

    def _outcome_record(
        self, term: Term, started: float, duration: float, status: int, ended: str
    ) -> bytes:
        return outcome_record(
            term.token,
            self.settings.identity,
            started,
            duration,
            status,
            ended,
            self.settings.max_holders,
            term.slot,
        )

    def _record_outcome(self, term: Term, record: bytes) -> None:
        """After the release, so the next leader never waits for it: a bounded, best-effort
        write (a failure is logged at debug level and changes nothing, exit code included).
        A stop signal meanwhile ends it at once and is acted on as usual."""
        cancel = Flag()
        try:
            written = self._await(
                lambda: self.backend.record_outcome(
                    self.settings.election, term.token, record, cancel
                ),
                cancel,
                give_up_at=time.monotonic() + OUTCOME_TIMEOUT,
                grace=0.5,
            )
        except Exception as exc:  # best effort: the run happened whatever the store says
            log.debug("could not record the run's outcome: %s", exc or type(exc).__name__)
            return
        if not written:
            log.debug("did not record the run's outcome: a later term's is there already")

    # -- health ------------------------------------------------------------------------------

    def _guard_gone(self, ready: set[int]) -> bool:
        """Answer what woke us from outside (health probes, the guard's watchdog pings) and
        say whether the guard died: every place the loop waits calls this first."""
        self._answer_pings(ready)
        gone_fd = self.guard.gone_fd
        return gone_fd is not None and gone_fd in ready and self.guard.guard_died()

    def _answer_pings(self, ready: set[int]) -> None:
        if self.pings.fd in ready:
            self.pings.drain()
            self.pong.set()

    def _answer_health_probe(self, timeout: float) -> bool:
        """From the HTTP thread: does the supervision loop still wake up when asked?"""
        self.pong.clear()
        self.pings.poke()
        return self.pong.wait(timeout)

    def _leader_view(self) -> dict[str, Any]:
        """`/leader`: this candidate's role; the leader's identity and token, from the store."""
        view: dict[str, Any] = {"role": self.role, "election": self.settings.election}
        term = self.term
        if self.role == "leader" and term is not None:
            view["leader"] = {"id": self.settings.identity, "token": term.token}
            return view
        try:
            leader = self.backend.view(self.settings.election).leader
        except Exception as exc:  # the endpoint answers, whatever the store does
            view["error"] = str(exc) or type(exc).__name__
            return view
        view["leader"] = None if leader is None else {"id": leader.identity, "token": leader.token}
        return view

    # -- helpers ------------------------------------------------------------------------------

    def _notify(self, status: str, ready: bool = False) -> None:
        """Tell the guard, which alone may speak to systemd (it is the unit's main pid)."""
        self.guard.send("notify", status=status, ready=ready)

    def _timing(self, term: Term) -> Timing:
        """The timing rule applies to the TTL the server granted, not the one we asked for."""
        return self.settings.timing.with_granted_ttl(term.clock.ttl)

    def _holders_field(self, term: Term | None = None) -> dict[str, int]:
        """Under `--max-holders`, our value says N (so others can check they agree) and, once
        holding, our slot; with N = 1 the value stays as before (and as older versions read)."""
        if self.settings.max_holders == 1:
            return {}
        fields = {"holders": self.settings.max_holders}
        if term is not None:
            fields["slot"] = term.slot
        return fields

    def _child_env(self, term: Term) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in HIDDEN_ENV}
        if env.pop("LEADERRUN_GRPC_VERBOSITY_SET", None):
            env.pop("GRPC_VERBOSITY", None)
        env.update(
            LEADERRUN_ELECTION=self.settings.election,
            LEADERRUN_ID=self.settings.identity,
            LEADERRUN_FENCING_TOKEN=str(term.token),
            LEADERRUN_SLOT=str(term.slot),
            LEADERRUN_BACKEND=str(self.settings.backend),
            LEADERRUN_LEASE_TTL=f"{term.clock.ttl:g}",
        )
        return env
