"""Long fault injection on a 3-member etcd cluster (`make chaos`)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import ProcessRegistry, wait_for
from runs import alive, sh, start, wait_exit
from servers import EtcdCluster

pytestmark = pytest.mark.chaos


def test_rolling_restart_of_every_member_keeps_the_child(
    etcd_cluster3: EtcdCluster, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """Kill and restart each member in turn, so whichever member leaderrun's client talks to
    dies at some point: the client must fail over and the child must never be stopped."""
    pid_file, done = tmp_path / "pid", tmp_path / "done"
    job = sh(f"echo $$ > {pid_file}; while [ ! -e {done} ]; do sleep 0.05; done")
    proc = start(processes, etcd_cluster3, election, *job, opts=("--ttl", "10s"), verbose=2)
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 20)
    child = int(pid_file.read_text())
    for member in etcd_cluster3.members:
        member.kill()
        etcd_cluster3.wait_healthy()
        member.start()
        etcd_cluster3.wait_healthy()
        assert alive(child) and proc.poll() is None, f"child stopped after {member!r} died"
    # Let the last lease deadline that predates the faults pass with the child still running.
    last_fault = time.monotonic()
    wait_for(lambda: time.monotonic() > last_fault + 10 or not alive(child), 15)
    assert alive(child) and proc.poll() is None
    done.touch()
    assert wait_exit(proc) == 0
    assert "WARNING" not in proc.read_stderr()
