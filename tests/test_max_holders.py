"""`--max-holders N` (issue 14): up to N candidates hold at once, each with its own child,
slot and fencing token, under the same timing rule, on both backends.

Concurrency is checked by the kernel, not by clocks: every job takes an exclusive `flock` on
the file of its `LEADERRUN_SLOT` without waiting. A lock is held until the process holding it
is gone (however it dies), so a job that finds its slot's lock taken proves that two jobs of
one slot ran at once; with slots in 0..N-1 that also bounds the jobs running at once by N.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest
from helpers import ProcessRegistry, TrackedPopen, descendants, wait_for
from runs import alive, operator, safety, start, status, wait_exit
from stores import Store

#: The job: take the slot's lock (a violation file if taken), log `pid slot token`, then
#: run until `<dir>/done-<token>` or `<dir>/done-all` exists (or `hold` seconds passed).
JOB = r"""
import fcntl, os, sys, time
root, hold = sys.argv[1], float(sys.argv[2])
slot, token = os.environ["LEADERRUN_SLOT"], os.environ["LEADERRUN_FENCING_TOKEN"]
lock = os.open(f"{root}/slot-{slot}.lock", os.O_CREAT | os.O_RDWR)
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    open(f"{root}/violation-{os.getpid()}", "w").write(f"slot {slot} already held\n")
with open(f"{root}/runs", "a") as runs:
    runs.write(f"{os.getpid()} {slot} {token}\n")
end = time.monotonic() + hold
while time.monotonic() < end:
    if os.path.exists(f"{root}/done-{token}") or os.path.exists(f"{root}/done-all"):
        break
    time.sleep(0.02)
"""


class Jobs:
    """The jobs of one test: what ran (pid, slot, token) and whether two shared a slot."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.script = root / "job.py"
        self.script.write_text(JOB)

    def command(self, hold: float = 120.0) -> tuple[str, ...]:
        return (sys.executable, str(self.script), str(self.root), f"{hold:g}")

    def runs(self) -> list[tuple[int, int, int]]:
        path = self.root / "runs"
        lines = path.read_text().splitlines() if path.exists() else []
        return [(int(p), int(s), int(t)) for p, s, t in (line.split() for line in lines)]

    def violations(self) -> list[str]:
        return [p.read_text() for p in self.root.glob("violation-*")]

    def finish(self, token: int | None = None) -> None:
        (self.root / ("done-all" if token is None else f"done-{token}")).touch()

    def wait_runs(self, count: int, timeout: float = 30) -> list[tuple[int, int, int]]:
        wait_for(lambda: len(self.runs()) >= count, timeout, message=f"{count} job runs")
        return self.runs()


def holders(
    store: Store,
    processes: ProcessRegistry,
    election: str,
    jobs: Jobs,
    count: int,
    n: int,
    opts: tuple[str, ...] = (),
) -> list[TrackedPopen]:
    """`count` candidates with `--max-holders n`, started one after another (queue order)."""
    procs = []
    for index in range(count):
        opts_i = ("--max-holders", str(n), "--id", f"c{index}", *opts)
        procs.append(start(processes, store, election, *jobs.command(), opts=opts_i))
        wait_for(lambda i=index: store.queued(election, i + 1), 30, message="queued")  # type: ignore[misc]
    return procs


def test_two_holders_run_at_once_and_the_third_takes_the_freed_slot(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    jobs = Jobs(tmp_path)
    procs = holders(store, processes, election, jobs, 3, 2)
    first = jobs.wait_runs(2)
    assert sorted(slot for _, slot, _ in first) == [0, 1]
    assert len({token for _, _, token in first}) == 2
    code, document = status(store, election)
    assert code == 0
    (shown,) = document["elections"]
    assert shown["max_holders"] == 2
    assert sorted(h["slot"] for h in shown["holders"]) == [0, 1]
    assert [w["id"] for w in shown["waiting"]] == ["c2"]
    assert len(jobs.runs()) == 2, "a third job ran while two held"

    _, slot, token = first[0]
    jobs.finish(token)
    third = jobs.wait_runs(3)[2]
    assert third[1] == slot, "the new holder takes the freed slot"
    assert third[2] > max(t for _, _, t in first), "its fencing token is newer"
    jobs.finish()
    assert [wait_exit(p) for p in procs] == [0, 0, 0]
    assert jobs.violations() == []


def test_a_candidate_with_another_n_is_refused_and_writes_nothing(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    jobs = Jobs(tmp_path)
    procs = holders(store, processes, election, jobs, 1, 2)
    jobs.wait_runs(1)
    for other in ("3", "1"):
        before = store.candidates(election)
        odd = start(processes, store, election, *jobs.command(),
                    opts=("--max-holders", other), name=f"n{other}", verbose=0)  # fmt: skip
        assert wait_exit(odd) == 2
        message = odd.read_stderr()
        assert f"--max-holders {other} does not match" in message
        assert "--max-holders 2" in message and "restarted" in message
        assert len(message.strip().splitlines()) == 1
        assert store.candidates(election) == before
    jobs.finish()
    assert wait_exit(procs[0]) == 0


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1025"])
def test_bad_max_holders_is_a_usage_error(
    store: Store, election: str, processes: ProcessRegistry, value: str
) -> None:
    proc = start(processes, store, election, "true", opts=("--max-holders", value), verbose=0)
    assert wait_exit(proc) == 2
    assert "--max-holders" in proc.read_stderr()
    assert store.candidates(election) == []


TTL = 4.0
TIMING = ("--ttl", f"{TTL:g}s", "--kill-grace", "1s", "--renew-interval", "0.5s")


def test_a_frozen_backend_kills_every_holders_job_by_the_deadline(
    store_private: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    jobs = Jobs(tmp_path)
    procs = holders(store_private, processes, election, jobs, 2, 2, opts=TIMING)
    children = [pid for pid, _, _ in jobs.wait_runs(2)]
    member = store_private.members[0]
    frozen_at = time.monotonic()
    member.freeze()
    try:
        wait_for(lambda: not any(alive(c) for c in children), TTL + 5, interval=0.005,
                 message="both jobs stopped")  # fmt: skip
        margin = frozen_at + TTL - safety(TTL) - time.monotonic()
    finally:
        member.thaw()
    assert margin >= 0, f"a job was still alive {-margin:.2f}s after freeze + T - safety"
    assert [wait_exit(p) for p in procs] == [75, 75]


def test_a_killed_holders_slot_is_taken_over_without_waiting_for_the_ttl(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """SIGKILL one holder's leaderrun: its job is killed and its lease released at once, so the
    waiter holds its slot long before the 60 s TTL could have expired it."""
    jobs = Jobs(tmp_path)
    procs = holders(store, processes, election, jobs, 3, 2, opts=("--ttl", "60s"))
    first = jobs.wait_runs(2)
    victim = next(i for i, p in enumerate(procs) if first[0][0] in descendants(p.pid))
    killed_at = time.monotonic()
    procs[victim].send_signal(signal.SIGKILL)
    third = jobs.wait_runs(3)[2]
    took = time.monotonic() - killed_at
    assert third[1] == first[0][1]
    assert not alive(first[0][0])
    assert took < 30, f"the slot was taken over only after {took:.1f}s (an expiry, not a release)"
    jobs.finish()
    for index, proc in enumerate(procs):
        if index != victim:
            assert wait_exit(proc) == 0
    assert jobs.violations() == []


def test_step_down_a_slot_hands_over_only_that_holder(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    jobs = Jobs(tmp_path)
    procs = holders(store, processes, election, jobs, 3, 2)
    first = {slot: (pid, token) for pid, slot, token in jobs.wait_runs(2)}
    done = operator(store, "step-down", "--slot", "1", election)
    assert done.returncode == 0, done.stderr
    assert "in slot 1" in done.stdout
    third = jobs.wait_runs(3)[2]
    assert third[1] == 1
    assert alive(first[0][0]), "the holder of slot 0 was left alone"
    assert not alive(first[1][0])
    jobs.finish()
    assert sorted(wait_exit(p) for p in procs) == [0, 0, 75]  # 75: the one that stepped down
    assert jobs.violations() == []


def test_twenty_candidates_share_three_slots_and_never_run_four_at_once(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    jobs = Jobs(tmp_path)
    procs = [
        start(processes, store, election, *jobs.command(hold=0.2), opts=opts, verbose=0)
        for opts in (("--max-holders", "3", "--id", f"c{i}") for i in range(20))
    ]
    assert [wait_exit(p, timeout=120) for p in procs] == [0] * 20
    runs = jobs.runs()
    assert len(runs) == 20
    assert {slot for _, slot, _ in runs} == {0, 1, 2}
    assert len({token for _, _, token in runs}) == 20
    assert jobs.violations() == []


def test_metrics_show_the_holders_and_our_slot(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    from servers import free_port

    jobs = Jobs(tmp_path)
    port = free_port()
    proc = start(processes, store, election, *jobs.command(),
                 opts=("--max-holders", "2", "--metrics-addr", f"127.0.0.1:{port}"))  # fmt: skip
    (_, slot, _), = jobs.wait_runs(1)
    import urllib.request

    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert f'leaderrun_holders{{election="{election}"}} 2.0' in page
    assert f'leaderrun_slot{{election="{election}"}} {slot}.0' in page
    jobs.finish()
    assert wait_exit(proc) == 0


def test_no_wait_and_wait_timeout_skip_while_every_slot_is_held(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    jobs = Jobs(tmp_path)
    procs = holders(store, processes, election, jobs, 2, 2)
    jobs.wait_runs(2)
    for mode in (("--no-wait",), ("--wait-timeout", "1s")):
        opts = ("--max-holders", "2", *mode, "--skip-exit-code", "9")
        late = start(processes, store, election, *jobs.command(), opts=opts, name=mode[0])
        assert wait_exit(late) == 9
    assert len(jobs.runs()) == 2
    jobs.finish()
    assert [wait_exit(p) for p in procs] == [0, 0]


def test_once_per_counts_runs_per_election_not_per_slot(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """`--once-per` under `--max-holders`: one successful run of any holder counts for the
    whole election, so the next candidate in the period skips, whichever slot it would take."""
    jobs = Jobs(tmp_path)
    opts = ("--max-holders", "2", "--once-per", "1h", "--skip-exit-code", "3")
    first = start(processes, store, election, *jobs.command(hold=0), opts=opts, name="first")
    assert wait_exit(first) == 0
    later = start(processes, store, election, *jobs.command(hold=0), opts=opts, name="later")
    assert wait_exit(later) == 3
    assert len(jobs.runs()) == 1
