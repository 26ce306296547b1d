"""The supervision state machine's own rules, driven by a fake clock (no store, no process):
every transition of `TermPlan`, the deadline arithmetic, and the store-call guard of a term's
first requests. The black-box tests against real servers prove the same rules end to end."""

from __future__ import annotations

import threading
import time

import pytest

from leaderrun.backends import Flag, LeaseClock, Term, woken_by
from leaderrun.errors import ExitCode
from leaderrun.settings import Settings, Timing, build_timing, parse_backend_url
from leaderrun.supervisor import Action, StoreSilent, Supervisor, TermPlan

TTL, GRACE = 10.0, 2.0
TIMING = Timing(ttl=TTL, kill_grace=GRACE, renew_interval=2.5)
# With t_ack = 0: the server may expire the lease at 10.0; the rule's point is 10 - 0.5 = 9.5;
# SIGKILL goes out KILL_LEAD (0.25 s) before it, SIGTERM a kill grace before that.
DEADLINE = TTL
KILL_BY = DEADLINE - 0.5 - 0.25
STOP_AT = KILL_BY - GRACE


def test_deadline_arithmetic_follows_the_timing_rule() -> None:
    assert TIMING.safety == 0.5
    assert TIMING.kill_by(DEADLINE) == pytest.approx(KILL_BY)
    assert TIMING.stop_at(DEADLINE) == pytest.approx(STOP_AT)
    assert Timing(ttl=60, kill_grace=1, renew_interval=15).safety == 3.0  # T/20


def test_a_running_child_waits_until_the_stop_point_then_is_at_risk() -> None:
    plan = TermPlan(TIMING)
    assert plan.decide(0.0, DEADLINE, lost=False, tree_alive=True) is Action.WAIT
    assert plan.wake_at(DEADLINE) == pytest.approx(STOP_AT)
    assert plan.decide(STOP_AT, DEADLINE, lost=False, tree_alive=True) is Action.AT_RISK


def test_an_answered_renewal_moves_the_stop_point() -> None:
    plan = TermPlan(TIMING)
    later = DEADLINE + 2.5
    assert plan.decide(STOP_AT, later, lost=False, tree_alive=True) is Action.WAIT
    assert plan.wake_at(later) == pytest.approx(STOP_AT + 2.5)


def test_at_risk_stop_kills_by_the_deadline_even_when_the_grace_is_longer() -> None:
    plan = TermPlan(TIMING)
    now = KILL_BY - 0.5  # resumed late: less than a kill grace left
    assert plan.decide(now, DEADLINE, lost=False, tree_alive=True) is Action.AT_RISK
    plan.stop(now, DEADLINE, ExitCode.LOST)
    assert plan.kill_at == pytest.approx(KILL_BY)
    assert plan.decide(now, DEADLINE, lost=False, tree_alive=True) is Action.WAIT
    assert plan.wake_at(DEADLINE) == pytest.approx(KILL_BY)
    assert plan.decide(KILL_BY, DEADLINE, lost=False, tree_alive=True) is Action.KILL
    plan.killed(KILL_BY)
    assert plan.decide(KILL_BY + 0.01, DEADLINE, lost=False, tree_alive=False) is Action.DONE
    assert plan.outcome == ExitCode.LOST


def test_a_lost_term_stops_the_child_and_exits_75() -> None:
    plan = TermPlan(TIMING)
    assert plan.decide(1.0, DEADLINE, lost=True, tree_alive=True) is Action.LOST
    plan.stop(1.0, DEADLINE, ExitCode.LOST)
    assert plan.kill_at == pytest.approx(1.0 + GRACE)
    assert plan.decide(1.5, DEADLINE, lost=True, tree_alive=True) is Action.WAIT
    assert plan.decide(1.6, DEADLINE, lost=True, tree_alive=False) is Action.DONE
    assert plan.outcome == ExitCode.LOST


def test_a_child_that_exited_past_the_deadline_still_ends_the_term_as_lost() -> None:
    """The guard may have killed the child while the worker was stopped: the worker must not
    report the kill as the child's own status, nor keep the term."""
    plan = TermPlan(TIMING)
    plan.outcome = 128 + 9
    assert plan.decide(STOP_AT + 1, DEADLINE, lost=False, tree_alive=False) is Action.AT_RISK


def test_a_term_that_lapsed_stays_at_risk_after_a_late_renewal() -> None:
    """A worker stalled past the stop point, then resumed: its renewal thread may get an
    answer (and a later deadline) before the loop looks. The guard may have killed the child
    meanwhile, so the child's status (137) must not become the exit code: still 75."""
    plan = TermPlan(TIMING)
    later = DEADLINE + 30.0
    assert plan.decide(STOP_AT, later, lost=False, tree_alive=False) is Action.WAIT
    assert plan.decide(STOP_AT, later, False, False, lapsed=True) is Action.AT_RISK
    plan.stop(STOP_AT, later, ExitCode.LOST)
    assert plan.decide(STOP_AT, later, False, False, lapsed=True) is Action.DONE
    assert plan.outcome == ExitCode.LOST


def test_lease_clock_lapses_only_on_an_answer_past_the_stop_margin() -> None:
    now = time.monotonic()
    timely = LeaseClock(ttl=TTL, last_ack=now - 5.0)
    timely.guard(stop_margin=3.0)  # stop point 2 s from now
    timely.acked(now, TTL, record=False)
    assert not timely.lapsed and timely.deadline() == pytest.approx(now + TTL)

    late = LeaseClock(ttl=TTL, last_ack=now - 8.0)
    late.guard(stop_margin=3.0)  # the stop point passed 1 s ago
    late.acked(time.monotonic(), TTL, record=False)
    assert late.lapsed, "an answer after the stop point lapses the term"
    late.acked(time.monotonic(), TTL, record=False)
    assert late.lapsed, "for good: a later, timely answer does not undo it"

    waiting = LeaseClock(ttl=TTL, last_ack=now - 8.0)  # no child yet: nothing to guard
    waiting.acked(time.monotonic(), TTL, record=False)
    assert not waiting.lapsed


def test_a_child_that_exits_by_itself_is_done_once_its_tree_is_gone() -> None:
    plan = TermPlan(TIMING)
    plan.outcome = 3
    assert plan.decide(1.0, DEADLINE, lost=False, tree_alive=True) is Action.WAIT
    plan.stop(1.0, DEADLINE)  # leftovers: SIGTERM now, SIGKILL after the grace
    assert plan.decide(1.0 + GRACE, DEADLINE, lost=False, tree_alive=True) is Action.KILL
    plan.killed(1.0 + GRACE)
    assert plan.decide(1.0 + GRACE, DEADLINE, lost=False, tree_alive=False) is Action.DONE
    assert plan.outcome == 3


def test_survivors_of_sigkill_are_swept_again_every_kill_grace() -> None:
    plan = TermPlan(TIMING)
    plan.outcome = 0
    plan.stop(0.0, DEADLINE)
    plan.killed(GRACE)
    assert plan.decide(GRACE + 0.1, DEADLINE, lost=False, tree_alive=True) is Action.WAIT
    assert plan.wake_at(DEADLINE) == pytest.approx(2 * GRACE)
    assert plan.decide(2 * GRACE, DEADLINE, lost=False, tree_alive=True) is Action.KILL


def test_a_forwarded_sigterm_is_followed_by_sigkill_and_keeps_the_childs_status() -> None:
    plan = TermPlan(TIMING)
    plan.forwarded_stop = True
    plan.stop(1.0, DEADLINE)
    # Losing the term meanwhile changes nothing: the kill time is already bounded.
    assert plan.decide(1.5, DEADLINE, lost=True, tree_alive=True) is Action.WAIT
    assert plan.decide(1.0 + GRACE, DEADLINE, lost=True, tree_alive=True) is Action.KILL
    plan.killed(1.0 + GRACE)
    plan.outcome = 128 + 9
    assert plan.decide(1.0 + GRACE, DEADLINE, lost=True, tree_alive=False) is Action.DONE
    assert plan.outcome == 128 + 9


def test_a_forwarded_stop_never_kills_later_than_the_deadline() -> None:
    plan = TermPlan(TIMING)
    plan.forwarded_stop = True
    plan.stop(KILL_BY - 1.0, DEADLINE)
    assert plan.kill_at == pytest.approx(KILL_BY)


def test_flag_wakes_every_linked_wait_and_later_links_at_once() -> None:
    flag, first, second = Flag(), threading.Event(), threading.Event()
    with woken_by(first, flag), woken_by(second, Flag(), flag):
        flag.set()
        assert first.is_set() and second.is_set()
    late = threading.Event()
    with flag.linked(late):
        assert late.is_set()
    assert flag.sleep(10.0) is True  # returns at once: already set


def test_losing_a_term_wakes_its_listener_once() -> None:
    calls: list[int] = []
    term = Term(key="k", clock=LeaseClock(ttl=TTL, listener=lambda: calls.append(1)))
    term.lose("first")
    term.lose("second")
    assert term.lost.is_set() and term.lost_reason == "first" and calls == [1]


def _supervisor() -> Supervisor:
    settings = Settings(
        backend=parse_backend_url("etcd://127.0.0.1:1"),
        election="unit",
        prefix="/leaderrun",
        identity="unit",
        timing=build_timing(ttl=3.0, kill_grace=1.0, renew_interval=0.5),
        connect_timeout=1.0,
        command=("true",),
    )
    supervisor = Supervisor(settings)
    from leaderrun import events

    supervisor.inbox = events.SignalInbox(())
    return supervisor


def test_a_store_request_that_never_answers_ends_the_term_before_the_stop_point() -> None:
    sup = _supervisor()
    term = Term(key="k", clock=LeaseClock(ttl=3.0, last_ack=time.monotonic()), token=1)
    never = threading.Event()
    stop_at = sup._timing(term).stop_at(term.clock.deadline())
    with pytest.raises(StoreSilent):
        sup._ask_store(term, never.wait)
    assert time.monotonic() < stop_at + 0.5
    assert term.lost.is_set()
    assert sup._still_safe_to_start(term) is False
    never.set()


def test_an_answer_in_time_is_returned_and_the_term_goes_on() -> None:
    sup = _supervisor()
    term = Term(key="k", clock=LeaseClock(ttl=3.0, last_ack=time.monotonic()), token=1)
    assert sup._ask_store(term, lambda: b"record") == b"record"
    assert sup._still_safe_to_start(term) is True


def test_no_child_is_started_once_the_renewals_have_been_failing_too_long() -> None:
    sup = _supervisor()
    term = Term(key="k", clock=LeaseClock(ttl=3.0, last_ack=time.monotonic() - 3), token=1)
    assert sup._still_safe_to_start(term) is False


def test_a_signal_is_never_lost_between_taking_signals_and_waiting() -> None:
    """The first wave drained a list, then waited: a SIGTERM arriving in between was lost.
    With the wakeup fd each signal is a byte on the pipe until taken, so the wait that
    follows returns at once."""
    import os
    import signal

    from leaderrun import events

    inbox = events.SignalInbox((signal.SIGUSR1, signal.SIGUSR2))
    try:
        assert inbox.take() == []
        os.kill(os.getpid(), signal.SIGUSR1)  # "between" the take and the wait
        assert inbox.fd in events.wait([inbox.fd], until=time.monotonic() + 5)
        os.kill(os.getpid(), signal.SIGUSR2)
        assert inbox.take() == [signal.SIGUSR1, signal.SIGUSR2]
    finally:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, signal.SIG_DFL)

