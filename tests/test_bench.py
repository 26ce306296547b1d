"""Figures, not pass/fail: handover latency and the timing rule's margin (`make bench`), on
every backend.

Run with `-s` to see the table. Timing claims live here because these machines are noisy;
the tests in the suite assert the properties, these measure how well they are kept.
"""

from __future__ import annotations

import re
import signal
import statistics
import time
from pathlib import Path

import pytest
from helpers import ProcessRegistry, wait_for
from runs import alive, sh, start, wait_exit
from stores import Store

pytestmark = pytest.mark.bench
ROUNDS = 5


def report(title: str, samples: list[float], unit: str = "ms") -> None:
    scale = 1000.0 if unit == "ms" else 1.0
    values = sorted(s * scale for s in samples)
    print(
        f"\n{title}: median {statistics.median(values):.0f}{unit}, "
        f"min {values[0]:.0f}{unit}, max {values[-1]:.0f}{unit} over {len(values)} rounds"
    )


def handover(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path, kill: bool
) -> float:
    """Seconds from signalling the leader's leaderrun to the next leader's child running."""
    ready, started = tmp_path / "ready", tmp_path / "started"
    for path in (ready, started):
        path.unlink(missing_ok=True)
    first = sh(f"trap 'exit 0' TERM; touch {ready}; while :; do sleep 0.05; done")
    a = start(processes, store, election, *first, opts=("--ttl", "10s"))
    wait_for(ready.exists, 15)
    b = start(processes, store, election, "touch", str(started))
    wait_for(lambda: store.queued(election, 2), 15)
    sent = time.monotonic()
    a.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    wait_for(started.exists, 15, interval=0.005)
    took = time.monotonic() - sent
    wait_exit(a)
    wait_exit(b)
    return took


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_bench_handover(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path, how: str
) -> None:
    samples = [
        handover(store, f"{election}-{n}", processes, tmp_path, how == "SIGKILL")
        for n in range(ROUNDS)
    ]
    report(f"{store.kind} handover after {how} of the leader (TTL 10s)", samples)


def test_bench_freeze_margin(
    store_private: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """Freeze the server; how long before `freeze + T - safety` was the child seen dead, and
    how long before its own lease/session deadline (t_ack + T) does leaderrun report it dead?"""
    ttl, safety = 6.0, 0.5
    seen_margins, reported = [], []
    for n in range(3):
        pid_file = tmp_path / f"pid{n}"
        job = sh(f"trap '' TERM; echo $$ > {pid_file}; while :; do sleep 0.05; done")
        opts = ("--ttl", f"{ttl:g}s", "--kill-grace", "1s", "--renew-interval", "1s")
        proc = start(processes, store_private, f"{election}-{n}", *job, opts=opts, verbose=0)
        wait_for(lambda p=pid_file: p.exists() and p.read_text().strip(), 15)
        child = int(pid_file.read_text())
        member = store_private.members[0]
        frozen = time.monotonic()
        member.freeze()
        wait_for(lambda c=child: not alive(c), ttl + 5, interval=0.005)
        seen_margins.append(frozen + ttl - safety - time.monotonic())
        member.thaw()
        wait_exit(proc, 60)
        found = re.search(r"stopped (\d+\.\d+)s before the lease deadline", proc.read_stderr())
        assert found
        reported.append(float(found[1]))
    kind = store_private.kind
    report(f"{kind} freeze: child seen dead this long before freeze + T - safety", seen_margins)
    report(
        f"{kind} freeze: child dead this long before t_ack + T (leaderrun's own clock)", reported
    )
