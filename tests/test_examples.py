"""The examples users copy must work as written: `make demo` shows a handover."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from helpers import ProcessRegistry, clean_env, wait_for
from runs import start, wait_exit
from servers import EtcdCluster

ROOT = Path(__file__).resolve().parent.parent


def test_demo_shows_a_handover_after_sigkill() -> None:
    leaderrun = Path(sys.executable).with_name("leaderrun")
    done = subprocess.run(
        ["bash", str(ROOT / "examples" / "demo.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(DEMO_LEADERRUN=str(leaderrun)),
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "killing the leader" in done.stdout
    assert "=== new leader:" in done.stdout
    assert "is gone" in done.stdout


def test_consumers_by_slot_take_distinct_partitions(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry
) -> None:
    """examples/consume-by-slot.sh under `--max-holders 2`: two hosts, two partitions."""
    script = str(ROOT / "examples" / "consume-by-slot.sh")
    procs = [
        start(processes, etcd, election, script, opts=("--max-holders", "2"), verbose=0)
        for _ in range(2)
    ]

    def partitions() -> set[str]:
        return {line for p in procs for line in p.read_stdout().splitlines()}

    seen = wait_for(lambda: len(partitions()) == 2 and partitions(), 30, message="2 consumers")
    assert sorted(line.split(" with ")[0] for line in seen) == [
        "consuming partition 0",
        "consuming partition 1",
    ]
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    assert [wait_exit(p) for p in procs] == [143, 143]
