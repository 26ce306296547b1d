"""The timing rule under server faults, on every backend: a frozen server stops the child in
time; a short restart or a cluster leader change does not stop it at all."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

from helpers import ProcessRegistry, wait_for
from runs import alive, child_pid, freeze_until_dead, long_job, sh, start, wait_exit
from stores import Store

T_FREEZE = 6.0


def test_frozen_server_child_dead_before_lease_deadline(
    store_private: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """SIGSTOP the only server: no renewal is answered after `t_freeze`, so the server could
    expire the lease/session at `t_freeze + T` at the earliest; the child (which ignores
    SIGTERM) must be dead by `t_freeze + T - safety`."""
    job, pid_file, _ = long_job(tmp_path)
    opts = ("--ttl", f"{T_FREEZE:g}s", "--kill-grace", "1s", "--renew-interval", "1s")
    proc = start(processes, store_private, election, *job, opts=opts)

    early = freeze_until_dead(store_private, child_pid(pid_file), T_FREEZE)
    print(f"\nfrozen {store_private.kind}: child dead {early:.3f}s before freeze + T - safety")
    assert early >= 0, f"child still alive {-early:.2f}s after freeze + T - safety"
    assert wait_exit(proc, 60) == 75
    err = proc.read_stderr()
    assert "lease renewal failing" in err
    assert re.search(r"stopped \d+\.\d+s before the lease deadline", err)


def test_one_second_server_restart_does_not_stop_the_child(
    store_private: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    job, pid_file, done = long_job(tmp_path, ignore_term=False)
    # Renewing every 0.5 s guarantees some renewal falls into the outage, so the recovery
    # below is really observed (with T/4 = 2.5 s a fast restart could slip between two).
    opts = ("--ttl", "10s", "--renew-interval", "0.5s", "-vv")
    proc = start(processes, store_private, election, *job, opts=opts)
    child = child_pid(pid_file)

    restarted_at = time.monotonic()
    store_private.members[0].restart(down_seconds=1.0)
    wait_for(lambda: "answered again" in proc.read_stderr(), 15)
    # The lease deadline as of the restart has passed: had leaderrun not renewed, it would
    # have stopped the child by now.
    latest_old_deadline = restarted_at + 10.0
    wait_for(lambda: time.monotonic() > latest_old_deadline or not alive(child), 15)
    assert alive(child) and proc.poll() is None

    done.touch()
    assert wait_exit(proc) == 0
    assert "WARNING" not in proc.read_stderr()


def test_killing_the_cluster_leader_does_not_stop_the_child(
    store_cluster3: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """etcd: the raft leader; ZooKeeper: the ensemble leader (every follower then drops its
    clients until a new leader is elected, so each client must reconnect within the margin)."""
    job, pid_file, done = long_job(tmp_path, ignore_term=False)
    proc = start(processes, store_cluster3, election, *job, opts=("--ttl", "10s", "-vv"))
    child = child_pid(pid_file)

    leader = store_cluster3.leader_member()
    killed_at = time.monotonic()
    leader.kill()
    try:
        wait_for(lambda: time.monotonic() > killed_at + 10.0 or not alive(child), 15)
        assert alive(child) and proc.poll() is None
        done.touch()
        assert wait_exit(proc) == 0
    finally:
        leader.start()
        store_cluster3.wait_healthy()
    assert "WARNING" not in proc.read_stderr()


def test_forever_leads_again_after_the_server_was_frozen_past_the_deadline(
    store_private: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """The lease/session is gone for good after a freeze longer than T: the child is stopped
    in time, and once the server answers again `--forever` campaigns anew (a new lease / a
    new session) and leads with a higher token."""
    journal, pid_file = tmp_path / "journal", tmp_path / "pid"
    job = sh(
        f'echo "$LEADERRUN_FENCING_TOKEN" >> {journal}; echo $$ > {pid_file}; '
        "while :; do sleep 0.05; done"
    )
    opts = ("--forever", "--ttl", f"{T_FREEZE:g}s", "--kill-grace", "1s", "--renew-interval", "1s")
    proc = start(processes, store_private, election, *job, opts=opts)
    # The fault: stay frozen until the server may have expired the lease/session.
    early = freeze_until_dead(store_private, child_pid(pid_file), T_FREEZE, T_FREEZE + 1)
    assert early >= 0, f"child still alive {-early:.2f}s after freeze + T - safety"

    wait_for(lambda: len(journal.read_text().split()) == 2, 60, message="a second term")
    tokens = [int(t) for t in journal.read_text().split()]
    assert tokens[1] > tokens[0]
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc) == 0
    assert store_private.candidates(election) == []
