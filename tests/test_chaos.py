"""Long fault injection on a 3-member etcd cluster and a 3-server ZooKeeper ensemble
(`make chaos`)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import ProcessRegistry, wait_for
from runs import alive, child_pid, long_job, start, wait_exit
from stores import Store

pytestmark = pytest.mark.chaos


def test_rolling_restart_of_every_member_keeps_the_child(
    store_cluster3: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """Kill and restart each member in turn, so whichever member leaderrun's client (etcd) or
    session (ZooKeeper) talks to dies at some point, and so does the cluster leader (on
    ZooKeeper each follower then drops its clients until a new leader is elected): the client
    must fail over and the child must never be stopped."""
    job, pid_file, done = long_job(tmp_path, ignore_term=False)
    proc = start(processes, store_cluster3, election, *job, opts=("--ttl", "10s"), verbose=2)
    child = child_pid(pid_file)
    for member in store_cluster3.members:
        member.kill()
        store_cluster3.wait_healthy()
        member.start()
        store_cluster3.wait_healthy()
        assert alive(child) and proc.poll() is None, f"child stopped after {member!r} died"
    # Let the last lease deadline that predates the faults pass with the child still running.
    last_fault = time.monotonic()
    wait_for(lambda: time.monotonic() > last_fault + 10 or not alive(child), 15)
    assert alive(child) and proc.poll() is None
    done.touch()
    assert wait_exit(proc) == 0
    assert "WARNING" not in proc.read_stderr()
