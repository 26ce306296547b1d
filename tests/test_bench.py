"""Figures, not pass/fail (`make bench`): leaderrun against its peer, measured in the same run.

Each test fills one or more rows of a single table (see bench_lib.ROWS), printed at the end of
the session and written to build/bench-results.md: leaderrun in one column, the tool people
would use instead in the other (`etcdctl lock`, kazoo's `Lock` recipe, a bare pyetcd client),
and a target with PASS/MISS. Timing never fails a test; a figure that could not be measured
does (its cell reads "error: ..."), without stopping the other measurements.
"""

from __future__ import annotations

import contextlib
import math
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from bench_lib import (
    CLK_TCK,
    PYETCD_FLOOR_SCRIPT,
    QUEUE_TIMEOUT,
    BenchError,
    Cell,
    Cells,
    Contender,
    EtcdctlLock,
    KazooLock,
    Leaderrun,
    Pair,
    Table,
    cell_procs,
    chain,
    cpu_ticks,
    describe_exit,
    fifty,
    has_text,
    leader_and_waiter,
    leaderrun_console_script,
    mib_unit,
    percent_unit,
    rss_mib,
    sh,
    sigkill_handovers,
    sigterm_handover,
    summary,
    timed_runs,
    tree,
    wait_until,
    worker_of,
)
from helpers import ProcessRegistry
from runs import freeze_until_dead, long_job, start, wait_exit
from servers import EtcdCluster
from stores import EtcdStore, Store, ZkStore

pytestmark = [pytest.mark.bench, pytest.mark.timeout(280)]

CHAIN_LENGTH = 16
CHAIN_ROUNDS = 2
SIGNAL_ROUNDS = 5
SIGKILL_CAP = 15.0
PEER_SIGKILL_ROUNDS = 3  # concurrently: each waits for the lock's session TTL
TRUE_ROUNDS = 10
WINDOW = 10.0
FREEZE_ROUNDS = 3

_TABLE = Table()


@pytest.fixture(scope="session")
def table(request: pytest.FixtureRequest) -> Table:
    """The session's result table; printed in the terminal summary."""
    manager = request.config.pluginmanager
    if not manager.is_registered(_TABLE):
        manager.register(_TABLE, "leaderrun-bench-table")
    return _TABLE


def _name(election: str, *parts: object) -> str:
    return "-".join([election, *(str(p) for p in parts)])


@pytest.mark.parametrize("backend", ["etcd", "zk"])
def test_bench_chain(
    backend: str, request: pytest.FixtureRequest, table: Table, election: str, tmp_path: Path
) -> None:
    """16 candidates at once, each job records its start and end: the median gap between one
    job's end and the next one's start, for leaderrun and for the peer."""
    server = request.getfixturevalue(backend)
    ours: Contender
    peer: Contender
    if isinstance(server, EtcdCluster):
        ours, peer = Leaderrun(EtcdStore(server)), EtcdctlLock(server)
    else:
        zk_store = ZkStore(server)
        ours, peer = Leaderrun(zk_store), KazooLock.create(zk_store, tmp_path)
    key = f"chain-{backend}"
    for side, tool in (("leaderrun", ours), ("peer", peer)):

        def measure(tool: Contender = tool, side: str = side) -> Cell:
            samples: list[float] = []
            for n in range(CHAIN_ROUNDS):
                work = tmp_path / f"{side}-{n}"
                with cell_procs(tmp_path, f"{side}-{n}") as procs:
                    samples += chain(tool, _name(election, side, n), work, procs, CHAIN_LENGTH)
            return summary(samples)

        table.measure(key, side, measure)
    table.fail_on_errors(key)


def test_bench_sigterm(etcd: EtcdCluster, table: Table, election: str, tmp_path: Path) -> None:
    """killpg(SIGTERM) of the leader's tool (leaderrun: guard and worker; etcdctl: etcdctl
    and its job) -> the waiter's job has run."""
    for side, tool in (("leaderrun", Leaderrun(EtcdStore(etcd))), ("peer", EtcdctlLock(etcd))):

        def measure(tool: Contender = tool, side: str = side) -> Cell:
            samples = []
            for n in range(SIGNAL_ROUNDS):
                with cell_procs(tmp_path, f"{side}-{n}") as procs:
                    name = _name(election, side, n)
                    samples.append(sigterm_handover(tool, name, tmp_path / f"{side}-{n}", procs))
            return summary(samples)

        table.measure("sigterm", side, measure)
    table.fail_on_errors("sigterm")


def _sigkill_cell(results: list[tuple[float, bool]]) -> Cell:
    orphans = sum(1 for _, running in results if running)
    note = f"orphaned job alive at handover: {orphans}/{len(results)}"
    return summary([took for took, _ in results], cap=SIGKILL_CAP, note=note)


def test_bench_sigkill(etcd: EtcdCluster, table: Table, election: str, tmp_path: Path) -> None:
    """SIGKILL of the tool's main pid only (leaderrun's guard; etcdctl) -> the waiter's job
    has run. leaderrun with a 60 s TTL, so only a release explains a short handover; etcdctl
    lock with `--ttl 10` (its session must expire). Capped at SIGKILL_CAP."""
    ours = Leaderrun(EtcdStore(etcd))

    def measure_ours() -> Cell:
        results: list[tuple[float, bool]] = []
        for n in range(SIGNAL_ROUNDS):
            with cell_procs(tmp_path, f"leaderrun-{n}") as procs:
                name = _name(election, "leaderrun", n)
                pair = leader_and_waiter(ours, name, tmp_path / f"ours-{n}", procs, ttl=60)
                results += sigkill_handovers([pair], SIGKILL_CAP)
            if math.isinf(results[-1][0]):
                break  # no release: more rounds would only wait out the cap again
        return _sigkill_cell(results)

    def measure_peer() -> Cell:
        with cell_procs(tmp_path, "peer") as procs:
            tool = EtcdctlLock(etcd)
            pairs: list[Pair] = [
                leader_and_waiter(
                    tool, _name(election, "peer", n), tmp_path / f"peer-{n}", procs, ttl=10
                )
                for n in range(PEER_SIGKILL_ROUNDS)
            ]
            return _sigkill_cell(sigkill_handovers(pairs, SIGKILL_CAP))

    table.measure("sigkill", "leaderrun", measure_ours)
    table.measure("sigkill", "peer", measure_peer)
    table.fail_on_errors("sigkill")


def test_bench_fifty_candidates(
    etcd: EtcdCluster, table: Table, election: str, tmp_path: Path
) -> None:
    """50 candidates started at once, each job `sleep 0.2`: first start to last exit."""
    for side, tool in (("leaderrun", Leaderrun(EtcdStore(etcd))), ("peer", EtcdctlLock(etcd))):

        def measure(tool: Contender = tool, side: str = side) -> Cell:
            with cell_procs(tmp_path, side) as procs:
                return summary([fifty(tool, _name(election, side), procs)])

        table.measure("fifty", side, measure)
    table.fail_on_errors("fifty")


@pytest.mark.parametrize("backend", ["etcd", "zk"])
def test_bench_churn_three_holders(
    backend: str, request: pytest.FixtureRequest, table: Table, election: str, tmp_path: Path
) -> None:
    """20 candidates with `--max-holders 3` started at once, each job `sleep 0.2`: first start
    to last exit, beside the floor: the same 20 jobs three at a time with no coordination."""
    server = request.getfixturevalue(backend)
    store = EtcdStore(server) if isinstance(server, EtcdCluster) else ZkStore(server)
    key = f"churn3-{backend}"

    def measure_ours() -> Cell:
        with cell_procs(tmp_path, "leaderrun") as procs:
            took = fifty(Leaderrun(store), election, procs, 20, 120, "--max-holders", "3")
        return summary([took])

    def measure_floor() -> Cell:
        since = time.monotonic()
        subprocess.run(
            "seq 20 | xargs -P 3 -I{} sleep 0.2", shell=True, check=True, timeout=60
        )
        return summary([time.monotonic() - since])

    table.measure(key, "leaderrun", measure_ours)
    table.measure(key, "peer", measure_floor)
    table.fail_on_errors(key)


def test_bench_true(etcd: EtcdCluster, table: Table, election: str, tmp_path: Path) -> None:
    """`leaderrun -- true` (the installed console script) uncontended, against the least a
    Python client of the same library does: lease, put, revoke."""
    exe, how = leaderrun_console_script()
    ours = Leaderrun(EtcdStore(etcd), exe=exe)
    floor = tmp_path / "pyetcd_floor.py"
    floor.write_text(PYETCD_FLOOR_SCRIPT)
    host, port = etcd.members[0].endpoint.rsplit(":", 1)
    runners = {
        "leaderrun": lambda i: ours.argv(_name(election, i), ("true",)),
        "peer": lambda i: [sys.executable, str(floor), host, port, f"/bench-floor/{election}-{i}"],
    }
    for side, argv_for in runners.items():

        def measure(argv_for: Callable[[int], list[str]] = argv_for, side: str = side) -> Cells:
            with cell_procs(tmp_path, side) as procs:
                walls, cpus = timed_runs(argv_for, procs, TRUE_ROUNDS)
            note = f"via {how}" if side == "leaderrun" and how != "console script" else ""
            return {"true-wall": summary(walls, note=note), "true-cpu": summary(cpus)}

        table.measure_many(("true-wall", "true-cpu"), side, measure)
    table.fail_on_errors("true-wall", "true-cpu")


class Sampler:
    """CPU ticks of a process tree (without one subtree) from now on."""

    def __init__(self, root: int, exclude: int | None = None) -> None:
        self.root, self.exclude = root, exclude
        self.ticks0, self.t0 = self.ticks(), time.monotonic()

    def ticks(self) -> int:
        return cpu_ticks(tree(self.root, self.exclude))

    def cell(self) -> Cell:
        ticks, seconds = self.ticks() - self.ticks0, time.monotonic() - self.t0
        percent = 100.0 * ticks / CLK_TCK / seconds
        tick_ms = 1000 / CLK_TCK
        plural = "" if ticks == 1 else "s"
        return summary([percent], percent_unit, note=f"{ticks} tick{plural} of {tick_ms:g} ms")


def test_bench_idle(etcd: EtcdCluster, table: Table, election: str, tmp_path: Path) -> None:
    """One 10 s window for three setups side by side: a leaderrun leader and a waiting
    leaderrun; the same with etcdctl lock; a `--forever` leaderrun in its second term. Waiting
    CPU is the waiter's whole tree (leaderrun: guard and worker), leader CPU the `--forever`
    leaderrun's tree without its child; RSS is sampled each second from the holding leader's
    processes (leaderrun: guard, and the worker: its python child)."""
    ours, peer = Leaderrun(EtcdStore(etcd)), EtcdctlLock(etcd)
    with contextlib.ExitStack() as stack:
        procs = {
            side: stack.enter_context(cell_procs(tmp_path, side))
            for side in ("ours", "peer", "forever")
        }
        setups: dict[str, Pair] = {}
        errors: dict[str, BaseException] = {}
        for side, tool in (("ours", ours), ("peer", peer)):
            try:
                work = tmp_path / side
                setups[side] = leader_and_waiter(tool, _name(election, side), work, procs[side])
            except Exception as exc:
                errors[side] = exc

        # --forever: the first term's job exits at once (leaving a marker), the second sleeps.
        marker, second = tmp_path / "first-term-done", tmp_path / "second-term.pid"
        job = sh(
            f"if [ -e {marker} ]; then echo $$ > {second}.tmp && mv {second}.tmp {second}; "
            f"exec sleep 3600; else touch {marker}; fi"
        )
        samplers: dict[str, Sampler] = {}
        try:
            argv = ours.argv(_name(election, "forever"), job, None, "--forever")
            forever = procs["forever"].start(argv, name="forever")
            wait_until(second.exists, 30, "the second term's job", [forever])
            samplers["forever"] = Sampler(forever.pid, exclude=int(second.read_text()))
        except Exception as exc:
            errors["forever"] = exc
        for side, pair in setups.items():
            samplers[side] = Sampler(pair.waiter.pid)

        rss: dict[str, list[float]] = {"guard": [], "worker": [], "etcdctl": []}
        leaders = {side: pair.leader.pid for side, pair in setups.items()}
        pids: dict[str, Callable[[], int]] = {
            "guard": lambda: leaders["ours"],
            "worker": lambda: worker_of(leaders["ours"]),
            "etcdctl": lambda: leaders["peer"],
        }
        deadline = time.monotonic() + WINDOW
        while True:
            for label, pid_of in pids.items():
                side = "peer" if label == "etcdctl" else "ours"
                if side in setups and f"rss-{label}" not in errors:
                    try:
                        rss[label].append(rss_mib(pid_of()))
                    except Exception as exc:
                        errors[f"rss-{label}"] = exc
            if time.monotonic() >= deadline:
                break
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))  # the window itself

        def cpu(key: str) -> Cell:
            if key in errors:
                raise errors[key]
            exited = [
                describe_exit(p)
                for pair in setups.values()
                for p in (pair.leader, pair.waiter)
                if p.poll() is not None
            ]
            if exited:
                raise BenchError(f"exited during the window: {exited[0]}")
            return samplers[key].cell()

        table.measure("wait-cpu", "leaderrun", lambda: cpu("ours"))
        table.measure("wait-cpu", "peer", lambda: cpu("peer"))
        table.measure("leader-cpu", "leaderrun", lambda: cpu("forever"))

    def rss_cell(side: str, labels: tuple[str, ...]) -> Cell:
        for key in (side, *(f"rss-{label}" for label in labels)):
            if key in errors:
                raise errors[key]
        first = summary(rss[labels[0]], mib_unit)
        if len(labels) == 1:
            return first
        others = ", ".join(f"{lbl} {statistics.median(rss[lbl]):.1f} MiB" for lbl in labels[1:])
        return Cell(f"{labels[0]} {first.text}; {others}", first.samples)

    table.measure("rss", "leaderrun", lambda: rss_cell("ours", ("guard", "worker")))
    table.measure("rss", "peer", lambda: rss_cell("peer", ("etcdctl",)))
    table.fail_on_errors("wait-cpu", "leader-cpu", "rss")


def test_bench_freeze_margin(
    store_private: Store,
    table: Table,
    election: str,
    processes: ProcessRegistry,
    tmp_path: Path,
) -> None:
    """Freeze the server; how long before `freeze + T - safety` was the child seen dead, and
    how long before its own lease/session deadline (t_ack + T) does leaderrun report it dead?"""
    ttl = 6.0
    reported: list[float] = []

    def measure() -> Cell:
        seen: list[float] = []
        for n in range(FREEZE_ROUNDS):
            job, pid_file, _ = long_job(tmp_path, name=str(n))
            opts = ("--ttl", f"{ttl:g}s", "--kill-grace", "1s", "--renew-interval", "1s")
            proc = start(processes, store_private, f"{election}-{n}", *job, opts=opts, verbose=0)
            wait_until(has_text(pid_file), QUEUE_TIMEOUT, "the child", [proc])
            seen.append(freeze_until_dead(store_private, int(pid_file.read_text()), ttl))
            wait_exit(proc, 60)
            found = re.search(r"stopped (\d+\.\d+)s before the lease deadline", proc.read_stderr())
            if found:
                reported.append(float(found[1]))
        said = (
            f"leaderrun says {statistics.median(reported) * 1000:.0f} ms before t_ack + T"
            if len(reported) == len(seen)
            else "leaderrun did not report its own margin"
        )
        return summary(seen, note=said)

    key = f"freeze-{store_private.kind}"
    table.measure(key, "leaderrun", measure)
    table.fail_on_errors(key)
