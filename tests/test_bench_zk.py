"""The same figures as test_bench.py, on ZooKeeper (`make bench`, run with `-s`)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from helpers import ProcessRegistry, wait_for
from runs import alive, sh, start, wait_exit
from servers import ZkEnsemble
from test_bench import ROUNDS, handover, report

pytestmark = pytest.mark.bench


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_bench_handover_zk(
    zk: ZkEnsemble, election: str, processes: ProcessRegistry, tmp_path: Path, how: str
) -> None:
    samples = [
        handover(zk, f"{election}-{n}", processes, tmp_path, how == "SIGKILL")
        for n in range(ROUNDS)
    ]
    report(f"zk handover after {how} of the leader (TTL 10s)", samples)


def test_bench_freeze_margin_zk(
    zk_private: ZkEnsemble, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """Freeze ZooKeeper; how long before `freeze + T - safety` was the child seen dead, and
    how long before its own session deadline (t_ack + T) does leaderrun report it dead?"""
    ttl, safety = 6.0, 0.5
    seen_margins, reported = [], []
    for n in range(3):
        pid_file = tmp_path / f"pid{n}"
        job = sh(f"trap '' TERM; echo $$ > {pid_file}; while :; do sleep 0.05; done")
        opts = ("--ttl", f"{ttl:g}s", "--kill-grace", "1s", "--renew-interval", "1s")
        proc = start(processes, zk_private, f"{election}-{n}", *job, opts=opts)
        wait_for(lambda p=pid_file: p.exists() and p.read_text().strip(), 15)
        child = int(pid_file.read_text())
        member = zk_private.members[0]
        frozen = time.monotonic()
        member.freeze()
        wait_for(lambda c=child: not alive(c), ttl + 5, interval=0.005)
        seen_margins.append(frozen + ttl - safety - time.monotonic())
        member.thaw()
        wait_exit(proc, 60)
        found = re.search(r"stopped (\d+\.\d+)s before the lease deadline", proc.read_stderr())
        assert found
        reported.append(float(found[1]))
    report("zk freeze: child seen dead this long before freeze + T - safety", seen_margins)
    report("zk freeze: child dead this long before t_ack + T (leaderrun's own clock)", reported)
