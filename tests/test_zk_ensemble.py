"""SPEC §3 on a ZooKeeper ensemble: a follower cut off from the ensemble leader keeps answering
its clients for up to syncLimit * tickTime, while the leader (which expires sessions) no longer
hears about them. The child of a leaderrun connected only to that follower must be stopped
before the next candidate (on the majority) starts its own.

The ensemble is `zk_partition.PartitionedZkEnsemble` (tickTime 500 ms, syncLimit 10: a
follower gives up on the leader 5 s after it last heard from it). Jobs log their start and end
on CLOCK_MONOTONIC, which every process of the machine shares.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from helpers import ProcessRegistry, wait_for
from runs import URL, start, wait_exit
from stores import store_for
from zk_partition import PartitionedZkEnsemble

#: T, renew interval, kill grace: T must cover 2 * tickTime + renew interval + kill grace
#: + safety + 0.25 s (see docs/backends.md): 1 + 1 + 1 + 0.75 < 10.
TIMING = ("--ttl", "10s", "--renew-interval", "1s", "--kill-grace", "1s")

#: A job that logs `start <monotonic>` and, on SIGTERM, `end <monotonic>`, then exits.
JOB = """
import signal, sys, time
log = sys.argv[1]
def note(what):
    with open(log, "a") as f:
        f.write(f"{what} {time.monotonic():.6f}\\n")
def end(*_):
    note("end")
    sys.exit(0)
signal.signal(signal.SIGTERM, end)
note("start")
while True:
    time.sleep(1)
"""


def test_refuses_a_ttl_that_cannot_cover_the_followers_bound(
    zk_partitioned: PartitionedZkEnsemble, processes: ProcessRegistry, election: str, tmp_path: Path
) -> None:
    """1 s (2 * tickTime 500 ms, read from `conf`) + renew interval 1.5 s (given) + kill grace
    3 s + safety 0.5 s + 0.25 s does not fit in 6 s: exit 2 before anything runs, naming both.
    Without --renew-interval the interval shrinks to fit (1 s here) and the job runs."""
    ran = tmp_path / "ran"
    opts = ("--ttl", "6s", "--renew-interval", "1.5s")
    proc = start(processes, zk_partitioned, election, "touch", str(ran), opts=opts)
    assert wait_exit(proc) == 2
    err = proc.read_stderr()
    assert "session timeout 6s" in err and "= 6.25s" in err, err
    assert "2 * tickTime 500ms" in err and "raise --ttl" in err, err
    assert not ran.exists()
    fitted = start(processes, zk_partitioned, election, "touch", str(ran), opts=("--ttl", "6s"))
    assert wait_exit(fitted) == 0, fitted.read_stderr()
    assert "renewing every 1s" in fitted.read_stderr()
    assert ran.exists()


def test_zk_tick_time_option_replaces_what_the_servers_say(
    zk_partitioned: PartitionedZkEnsemble, processes: ProcessRegistry, election: str, tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    opts = (*TIMING, "--zk-tick-time", "4s")
    proc = start(processes, zk_partitioned, election, "touch", str(ran), opts=opts)
    assert wait_exit(proc) == 2
    assert "--zk-tick-time" in proc.read_stderr() and not ran.exists()
    ok = start(processes, zk_partitioned, election, "touch", str(ran), opts=TIMING)
    assert wait_exit(ok) == 0, ok.read_stderr()
    assert ran.exists()


def test_zk_tick_time_is_not_an_etcd_option(processes: ProcessRegistry) -> None:
    proc = start(processes, URL("etcd://127.0.0.1:1"), "job", "true", opts=("--zk-tick-time", "5s"))
    assert wait_exit(proc) == 2
    assert "--zk-tick-time is for zk://, zks:// backends" in proc.read_stderr()


def logged(path: Path, what: str) -> float | None:
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        word, _, stamp = line.partition(" ")
        if word == what:
            return float(stamp)
    return None


def test_cut_off_follower_stops_child_before_next_leader_starts(
    zk_partitioned: PartitionedZkEnsemble, processes: ProcessRegistry, election: str, tmp_path: Path
) -> None:
    follower = zk_partitioned.follower()
    majority = [m for m in zk_partitioned.members if m is not follower]
    script = tmp_path / "job.py"
    script.write_text(JOB)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"

    a = start(
        processes,
        URL(f"zk://{follower.endpoint}"),
        election,
        sys.executable,
        str(script),
        str(log_a),
        opts=TIMING,
        name="a",
    )
    wait_for(lambda: logged(log_a, "start"), 30, message="first job started")
    b = start(
        processes,
        URL("zk://" + ",".join(m.endpoint for m in majority)),
        election,
        sys.executable,
        str(script),
        str(log_b),
        opts=TIMING,
        name="b",
    )
    wait_for(lambda: store_for(zk_partitioned).queued(election, 2), 15, message="b queued")

    cut = time.monotonic()
    zk_partitioned.isolate(follower)
    try:
        b_start = wait_for(lambda: logged(log_b, "start"), 40, message="second job started")
        a_end = wait_for(lambda: logged(log_a, "end"), 40, message="first job ended")
        assert wait_exit(a, 15) == 75, a.read_stderr()
    finally:
        zk_partitioned.heal()
    overlap = a_end - b_start
    print(
        f"cut at 0: first job ended at {a_end - cut:.2f}s, second started at "
        f"{b_start - cut:.2f}s, overlap {overlap:.2f}s"
    )
    assert overlap < 0, (
        f"two jobs at once for {overlap:.2f}s: the first ended {a_end - cut:.2f}s after the cut, "
        f"the second started {b_start - cut:.2f}s after it\n--- a:\n{a.read_stderr()}"
        f"\n--- b:\n{b.read_stderr()}"
    )
    b.terminate()
    wait_exit(b, 15)
