"""The timing rule under etcd faults: a frozen server stops the child in time, a short restart
or a raft leader change does not stop it at all."""

from __future__ import annotations

import re
import time
from pathlib import Path

from helpers import ProcessRegistry, wait_for
from servers import EtcdCluster
from test_run_etcd import alive, sh, start, wait_exit

T_FREEZE = 6.0
SAFETY = 0.5  # max(0.5 s, T/20) for both TTLs used here


def _long_job(tmp_path: Path, ignore_term: bool = True) -> tuple[tuple[str, ...], Path, Path]:
    pid_file, done = tmp_path / "pid", tmp_path / "done"
    trap = "trap '' TERM; " if ignore_term else ""
    job = sh(f"{trap}echo $$ > {pid_file}; while [ ! -e {done} ]; do sleep 0.05; done")
    return job, pid_file, done


def _child_pid(pid_file: Path) -> int:
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 20, message="child up")
    return int(pid_file.read_text())


def test_frozen_etcd_child_dead_before_lease_deadline(
    etcd_private: EtcdCluster, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """SIGSTOP the only etcd member: no keep-alive is answered after `t_freeze`, so the server
    could expire the lease at `t_freeze + T` at the earliest; the child (which ignores SIGTERM)
    must be dead by `t_freeze + T - safety`."""
    job, pid_file, _ = _long_job(tmp_path)
    opts = ("--ttl", f"{T_FREEZE:g}s", "--kill-grace", "1s", "--renew-interval", "1s")
    proc = start(processes, etcd_private, election, *job, opts=opts)
    child = _child_pid(pid_file)
    member = etcd_private.members[0]

    frozen_at = time.monotonic()
    member.freeze()
    wait_for(lambda: not alive(child), T_FREEZE + 5, interval=0.01, message="child stopped")
    dead_seen_at = time.monotonic()
    member.thaw()

    assert dead_seen_at <= frozen_at + T_FREEZE - SAFETY, (
        f"child still alive {dead_seen_at - frozen_at:.2f}s after the freeze"
    )
    assert wait_exit(proc, 60) == 75
    err = proc.read_stderr()
    assert "lease renewal failing" in err
    assert re.search(r"stopped \d+\.\d+s before the lease deadline", err)


def test_one_second_etcd_restart_does_not_stop_the_child(
    etcd_private: EtcdCluster, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    job, pid_file, done = _long_job(tmp_path, ignore_term=False)
    proc = start(processes, etcd_private, election, *job, opts=("--ttl", "10s", "-vv"))
    child = _child_pid(pid_file)

    restarted_at = time.monotonic()
    etcd_private.members[0].restart(down_seconds=1.0)
    wait_for(lambda: "keep-alive answered again" in proc.read_stderr(), 15)
    # The lease deadline as of the restart has passed: had leaderrun not renewed, it would
    # have stopped the child by now.
    latest_old_deadline = restarted_at + 10.0
    wait_for(lambda: time.monotonic() > latest_old_deadline or not alive(child), 15)
    assert alive(child) and proc.poll() is None

    done.touch()
    assert wait_exit(proc) == 0
    assert "WARNING" not in proc.read_stderr()


def test_killing_the_etcd_raft_leader_does_not_stop_the_child(
    etcd_cluster3: EtcdCluster, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    job, pid_file, done = _long_job(tmp_path, ignore_term=False)
    proc = start(processes, etcd_cluster3, election, *job, opts=("--ttl", "10s", "-vv"))
    child = _child_pid(pid_file)

    raft_leader = etcd_cluster3.raft_leader()
    killed_at = time.monotonic()
    raft_leader.kill()
    try:
        wait_for(lambda: time.monotonic() > killed_at + 10.0 or not alive(child), 15)
        assert alive(child) and proc.poll() is None
        done.touch()
        assert wait_exit(proc) == 0
    finally:
        raft_leader.start()
        etcd_cluster3.wait_healthy()
    assert "WARNING" not in proc.read_stderr()
