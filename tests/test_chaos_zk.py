"""Long fault injection on a 3-server ZooKeeper ensemble (`make chaos`)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import ProcessRegistry, wait_for
from runs import alive, sh, start, wait_exit
from servers import ZkEnsemble

pytestmark = pytest.mark.chaos


def test_rolling_restart_of_every_zk_server_keeps_the_child(
    zk_ensemble3: ZkEnsemble, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """Kill and restart each server in turn, so the one leaderrun's session is connected to
    dies at some point, and so does the ensemble leader (each follower then drops its
    clients until a new leader is elected): the session and the child must survive."""
    pid_file, done = tmp_path / "pid", tmp_path / "done"
    job = sh(f"echo $$ > {pid_file}; while [ ! -e {done} ]; do sleep 0.05; done")
    proc = start(processes, zk_ensemble3, election, *job, opts=("--ttl", "10s"), verbose=2)
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 20)
    child = int(pid_file.read_text())
    for member in zk_ensemble3.members:
        member.kill()
        zk_ensemble3.wait_healthy()
        member.start()
        zk_ensemble3.wait_healthy()
        assert alive(child) and proc.poll() is None, f"child stopped after {member!r} died"
    last_fault = time.monotonic()
    wait_for(lambda: time.monotonic() > last_fault + 10 or not alive(child), 15)
    assert alive(child) and proc.poll() is None
    done.touch()
    assert wait_exit(proc) == 0
    assert "WARNING" not in proc.read_stderr()
