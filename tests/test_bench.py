"""Figures, not pass/fail: handover latency and the timing rule's margin (`make bench`), on
every backend.

Run with `-s` to see the table. Timing claims live here because these machines are noisy;
the tests in the suite assert the properties, these measure how well they are kept.
"""

from __future__ import annotations

import re
import signal
import statistics
from pathlib import Path

import pytest
from helpers import ProcessRegistry
from runs import child_pid, freeze_until_dead, handover, long_job, start, wait_exit
from stores import Store

pytestmark = pytest.mark.bench
ROUNDS = 5
FREEZE_ROUNDS = 3


def report(title: str, samples: list[float], unit: str = "ms") -> None:
    scale = 1000.0 if unit == "ms" else 1.0
    values = sorted(s * scale for s in samples)
    print(
        f"\n{title}: median {statistics.median(values):.0f}{unit}, "
        f"min {values[0]:.0f}{unit}, max {values[-1]:.0f}{unit} over {len(values)} rounds"
    )


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_bench_handover(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path, how: str
) -> None:
    """Seconds from signalling the leader's leaderrun to the next leader's child running."""
    signum = signal.SIGKILL if how == "SIGKILL" else signal.SIGTERM
    samples = [
        handover(processes, store, f"{election}-{n}", tmp_path, signum) for n in range(ROUNDS)
    ]
    report(f"{store.kind} handover after {how} of the leader (TTL 60s)", samples)


def test_bench_freeze_margin(
    store_private: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """Freeze the server; how long before `freeze + T - safety` was the child seen dead, and
    how long before its own lease/session deadline (t_ack + T) does leaderrun report it dead?"""
    ttl = 6.0
    seen_margins, reported = [], []
    for n in range(FREEZE_ROUNDS):
        job, pid_file, _ = long_job(tmp_path, name=str(n))
        opts = ("--ttl", f"{ttl:g}s", "--kill-grace", "1s", "--renew-interval", "1s")
        proc = start(processes, store_private, f"{election}-{n}", *job, opts=opts, verbose=0)
        seen_margins.append(freeze_until_dead(store_private, child_pid(pid_file), ttl))
        wait_exit(proc, 60)
        found = re.search(r"stopped (\d+\.\d+)s before the lease deadline", proc.read_stderr())
        assert found, proc.read_stderr()
        reported.append(float(found[1]))
    kind = store_private.kind
    report(f"{kind} freeze: child seen dead this long before freeze + T - safety", seen_margins)
    report(
        f"{kind} freeze: child dead this long before t_ack + T (leaderrun's own clock)", reported
    )
