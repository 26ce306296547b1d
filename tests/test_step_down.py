"""`step-down` is a handover, not a race (SPEC §7), on every backend: the leader stops its whole
tree first and only then releases, so the next job starts after the old one is gone."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from helpers import LEADERRUN_CMD, ProcessRegistry, descendants, wait_for
from runs import alive, child_pid, long_job, operator, queue_ids, sh, start, status, wait_exit
from stores import Store

SLOW_JOB = """\
#!/usr/bin/env python3
# A job slow to stop: on SIGTERM it takes 1.5 s (its background grandchild 1.2 s) to finish,
# then appends "<who> end <time>" to the journal.
import os, signal, sys, time

journal, who, delay = sys.argv[1], "child", 1.5

def finish(signum, frame):
    time.sleep(delay)
    with open(journal, "a") as f:
        f.write(f"{who} end {time.time():.6f}\\n")
    if who == "child":
        os.wait()
    os._exit(0)

signal.signal(signal.SIGTERM, finish)  # before the fork: both have it from the start
if os.fork() == 0:
    who, delay = "grandchild", 1.2
if who == "child":
    with open(journal, "a") as f:
        f.write("start\\n")
while True:
    signal.pause()
"""


def slow_job(tmp_path: Path) -> tuple[tuple[str, ...], Path]:
    """A job that takes ~1.5 s to shut down after SIGTERM, with a background grandchild that
    takes ~1.2 s; each appends "<who> end <time>" to the journal as it ends."""
    script, journal = tmp_path / "slow-job.py", tmp_path / "journal"
    script.write_text(SLOW_JOB)
    script.chmod(0o755)
    return (str(script), str(journal)), journal


def test_the_next_job_starts_only_after_the_old_tree_is_gone(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    job, journal = slow_job(tmp_path)
    a = start(processes, store, election, *job, opts=("--kill-grace", "3s", "--id", "a"), name="a")
    wait_for(lambda: journal.exists() and "start" in journal.read_text(), 15, message="a's job")
    started = tmp_path / "b-started"
    b_job = sh(f"date +%s.%N > {started}")
    b = start(processes, store, election, *b_job, opts=("--id", "b"), name="b")
    wait_for(lambda: store.queued(election, 2), 15, message="b queued")

    done = operator(store, "step-down", election)
    assert done.returncode == 0, done.stderr
    assert wait_exit(b) == 0 and wait_exit(a) == 75
    lines = journal.read_text().splitlines()
    ends = [float(line.split()[-1]) for line in lines if " end " in line]
    assert len(ends) == 2, journal.read_text()  # the job and its grandchild, each stopped cleanly
    b_started = float(started.read_text())
    print(f"\n{store.kind}: the next job started {b_started - max(ends):.3f}s after the old tree")
    assert b_started > max(ends), f"b started {max(ends) - b_started:.3f}s before a's tree ended"
    err = a.read_stderr()
    assert "stepping down as asked by" in err and "handed over" in err


def test_step_down_timeout_on_a_frozen_leader_leaves_its_key(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """A leader that cannot act (its leaderrun frozen): exit 75 after --timeout, the leader's
    key untouched, the request withdrawn (so it does not act on it later by surprise)."""
    job, pid_file, done = long_job(tmp_path, ignore_term=False)
    a = start(processes, store, election, *job, opts=("--ttl", "30s"), name="a")
    child = child_pid(pid_file)
    before = store.candidates(election)
    frozen = [a.pid, *(p for p in _worker_pids(a.pid, child))]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        late = operator(store, "step-down", "--timeout", "1s", election)
        assert late.returncode == 75, late.stderr
        assert "did not hand over" in late.stderr and "--force" in late.stderr
        assert store.candidates(election) == before
        assert status(store, election)[1]["elections"][0]["step_down"] is None
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    assert alive(child)
    done.touch()
    assert wait_exit(a) == 0


def test_force_removes_the_leader_at_once_and_says_what_it_risks(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    job, pid_file, _ = long_job(tmp_path, ignore_term=False)
    a = start(processes, store, election, *job, name="a")
    child_pid(pid_file)
    forced = operator(store, "step-down", "--force", election)
    assert forced.returncode == 0, forced.stderr
    assert "--force" in forced.stderr and "fencing token" in forced.stderr
    assert wait_exit(a) == 75
    assert "leadership lost" in a.read_stderr()


def test_a_request_for_an_ended_term_is_ignored_and_status_shows_pending_ones(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """A stale request (for an earlier term) does not stop the next leader; a pending one is
    shown by `status` and invisible to the store's own election tools."""
    job, pid_file, done = long_job(tmp_path, ignore_term=True)  # ignores SIGTERM: slow to stop
    a = start(processes, store, election, *job, opts=("--id", "a", "--kill-grace", "5s"), name="a")
    child_pid(pid_file)
    b = start(processes, store, election, "true", opts=("--id", "b"), name="b")
    wait_for(lambda: store.queued(election, 2), 15)
    stepping = processes.start(
        [*LEADERRUN_CMD, "step-down", "--backend", store.backend_url, "--timeout", "20s", election],
        name="step-down",
    )
    pending = wait_for(
        lambda: status(store, election)[1]["elections"][0]["step_down"], 15, message="pending"
    )
    assert pending["token"] == store.candidates(election)[0].token
    assert queue_ids(store, election) == ["a", "b"]  # the request is no candidate
    assert wait_exit(stepping, 30) == 0
    assert wait_exit(b) == 0 and wait_exit(a) == 75
    del done

    # A request naming a term that has ended does nothing to the next leader's job.
    job2, pid2, done2 = long_job(tmp_path, ignore_term=False, name="c")
    c = start(processes, store, election, *job2, opts=("--id", "c"), name="c")
    child = child_pid(pid2)
    store.write_step_down_request(election, token=1)
    # The leader sees the request, finds it names an ended term, and removes it.
    wait_for(lambda: store.step_down_request(election) is None, 15, message="stale request gone")
    assert alive(child) and c.poll() is None
    done2.touch()
    assert wait_exit(c) == 0


def _worker_pids(leaderrun_pid: int, child: int) -> list[int]:
    tree = {child, *descendants(child)}
    return [p for p in descendants(leaderrun_pid) if p not in tree]
