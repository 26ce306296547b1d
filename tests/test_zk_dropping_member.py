"""A ZooKeeper member that drops packets (no RST, no answer: a firewall DROP, a pulled cable)
must not cost a leader its child while healthy members exist.

The leader reaches member 1 only through a TCP proxy (tests/nemesis/proxy.py) that can go
silent: it forwards nothing and closes nothing, and still accepts new connections, so a client
that tries that member again gets a connection and then no answer. kazoo's own bounds on one
member grow with the session timeout T (T for the TCP connect and TLS handshake, T / number of
members for ZooKeeper's Connect); leaderrun bounds each to about a second, so the client moves
to the next member well inside the margin.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from helpers import ProcessRegistry, wait_for
from nemesis.proxy import Proxy
from runs import URL, alive, child_pid, long_job, start, wait_exit, wait_reconnected
from servers import ZkEnsemble, ZkMember, four_letter
from stores import ZkStore

#: The default renew interval (T/4) and kill grace (3s), with a T the ensemble check accepts:
#: it must exceed the followers' bound (syncLimit 4 * tickTime 500ms + 250ms = 2.25s) + 2
#: renew intervals + kill grace + safety + 0.25s (13.75s at 15s).
TTL = 15.0


@pytest.fixture
def proxy(zk_ensemble3: ZkEnsemble) -> Iterator[Proxy]:
    """A proxy in front of member 1 (forwarding until the test silences it)."""
    proxy = Proxy(zk_ensemble3.members[0].endpoint)
    try:
        yield proxy
    finally:
        proxy.close()


def holders(ensemble: ZkEnsemble, session_id: int) -> list[ZkMember]:
    """The members holding a client connection of `session_id` (4lw `cons`). Member 1 keeps
    the proxy's connection open after the proxy went silent, so it may be one of them."""
    return [
        member
        for member in ensemble.live_members()
        if f"sid=0x{session_id:x}" in (four_letter(member.endpoint, "cons") or "")
    ]


def test_member_that_drops_packets_mid_term_is_left_and_the_child_runs_on(
    zk_ensemble3: ZkEnsemble,
    proxy: Proxy,
    election: str,
    processes: ProcessRegistry,
    tmp_path: Path,
) -> None:
    m1, m2, m3 = zk_ensemble3.members
    url = URL(f"zk://{proxy.endpoint},{m2.endpoint},{m3.endpoint}")
    job, pid_file, done = long_job(tmp_path, ignore_term=False)
    proc = start(processes, url, election, *job, opts=("--ttl", f"{TTL:g}s"))
    child = child_pid(pid_file)
    session = ZkStore(zk_ensemble3).leader_handle(election)
    assert holders(zk_ensemble3, session) == [m1], "the leader is not on the proxy"

    silenced_at = time.monotonic()
    proxy.set_mode("silent")
    reconnected, moved_after = wait_reconnected(
        proc, silenced_at, TTL, "leaderrun to reconnect to another member"
    )
    assert reconnected[2] in (m2.endpoint, m3.endpoint), reconnected[0]
    assert {m2, m3} & set(holders(zk_ensemble3, session)), "no healthy member holds the session"
    print(f"moved off the silent member after {moved_after:.2f}s (logged {reconnected[1]}s)")

    # Past T since the proxy went silent: only renewals through a healthy member keep it.
    wait_for(
        lambda: time.monotonic() > silenced_at + TTL + 1.0 or not alive(child),
        TTL + 5,
        interval=0.05,
    )
    assert alive(child) and proc.poll() is None, proc.read_stderr()

    done.touch()
    assert wait_exit(proc) == 0
    err = proc.read_stderr()
    assert "WARNING" not in err and "at risk" not in err and "killed" not in err, err


@contextmanager
def dropping_syns() -> Iterator[str]:
    """host:port of a listener whose accept queue is full: the kernel drops every further SYN
    (no RST), so a TCP connect to it hangs, as to a host behind a firewall DROP."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    queued: list[socket.socket] = []
    try:
        while True:
            probe = socket.socket()
            queued.append(probe)
            probe.settimeout(0.5)
            try:
                probe.connect(listener.getsockname())
            except TimeoutError:
                break  # this SYN was dropped: the queue is full
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        for sock in [*queued, listener]:
            sock.close()


@pytest.mark.parametrize("fault", ["no-answer", "no-syn-ack"])
def test_dead_member_listed_first_costs_about_a_second_not_t(
    zk_ensemble3: ZkEnsemble,
    proxy: Proxy,
    election: str,
    processes: ProcessRegistry,
    tmp_path: Path,
    fault: str,
) -> None:
    """With --ttl 60s kazoo alone waits 60 s / 3 = 20 s for a silent member's answer to
    Connect, or 60 s for a TCP connect nobody answers: past --connect-timeout 10s (exit 69).
    Bounded, the next member serves us about a second later."""
    _, m2, m3 = zk_ensemble3.members
    with ExitStack() as stack:
        if fault == "no-answer":
            proxy.set_mode("silent")  # accepts, never answers
            dead = proxy.endpoint
        else:
            dead = stack.enter_context(dropping_syns())
        url = URL(f"zk://{dead},{m2.endpoint},{m3.endpoint}")
        job, pid_file, done = long_job(tmp_path, ignore_term=False)
        started = time.monotonic()
        opts = ("--ttl", "60s", "--connect-timeout", "10s")
        proc = start(processes, url, election, *job, opts=opts)
        child_pid(pid_file)
        took = time.monotonic() - started
    print(f"child running {took:.2f}s after start, past a dead first member ({fault})")
    session = ZkStore(zk_ensemble3).leader_handle(election)
    assert {m2, m3} & set(holders(zk_ensemble3, session)), "no healthy member holds the session"
    assert took < 5.0, f"{took:.1f}s to get past the dead member"
    done.touch()
    assert wait_exit(proc) == 0
