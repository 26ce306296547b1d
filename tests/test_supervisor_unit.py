"""The supervisor's guards around a term's first store requests (no store needed: the
behaviour under test is leaderrun's reaction to a request that never returns)."""

from __future__ import annotations

import threading
import time

import pytest

from leaderrun.backends import Leadership, LeaseClock
from leaderrun.settings import Settings, build_timing, parse_backend_url
from leaderrun.supervisor import StoreSilent, Supervisor


def supervisor(ttl: float = 3.0) -> Supervisor:
    settings = Settings(
        backend=parse_backend_url("etcd://127.0.0.1:1"),
        election="unit",
        prefix="/leaderrun",
        identity="unit",
        timing=build_timing(ttl=ttl, kill_grace=1.0, renew_interval=0.5),
        connect_timeout=1.0,
        command=("true",),
    )
    return Supervisor(settings)


def leadership(ttl: float = 3.0) -> Leadership:
    return Leadership(token=1, key="k", clock=LeaseClock(ttl=ttl, last_ack=time.monotonic()))


def test_a_store_request_that_never_answers_ends_the_term_before_the_stop_point() -> None:
    sup, lead = supervisor(), leadership()
    never = threading.Event()
    stop_at = sup._timing(lead).stop_at(lead.clock.deadline())
    with pytest.raises(StoreSilent):
        sup._ask_store(lead, never.wait)
    assert time.monotonic() < stop_at + 0.5
    assert lead.lost.is_set()
    assert sup._still_safe_to_start(lead) is False
    never.set()


def test_an_answer_in_time_is_returned_and_the_term_goes_on() -> None:
    sup, lead = supervisor(), leadership()
    assert sup._ask_store(lead, lambda: b"record") == b"record"
    assert sup._still_safe_to_start(lead) is True


def test_no_child_is_started_once_the_renewals_have_been_failing_too_long() -> None:
    sup = supervisor()
    lead = Leadership(token=1, key="k", clock=LeaseClock(ttl=3.0, last_ack=time.monotonic() - 3))
    assert sup._still_safe_to_start(lead) is False
