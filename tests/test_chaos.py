"""Fault injection on a 3-member etcd cluster and a 3-server ZooKeeper ensemble.

The rolling restart and the long nemesis runs are `make chaos`; a 60 s seeded nemesis run per
backend (`nemesis_short`) is part of `make test`."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from helpers import ProcessRegistry, wait_for
from nemesis.checker import Result
from nemesis.harness import (
    DEFAULT_FAULTS,
    PARTITION_FAULTS,
    Nemesis,
    StoreAdapter,
    chaos_seconds,
    chaos_seed,
    faults_from_env,
)
from nemesis.proxy import Partitions
from runs import alive, child_pid, long_job, start, wait_exit
from servers import EtcdCluster, ZkEnsemble
from stores import Store


@pytest.mark.chaos
def test_rolling_restart_of_every_member_keeps_the_child(
    store_cluster3: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """Kill and restart each member in turn, so whichever member leaderrun's client (etcd) or
    session (ZooKeeper) talks to dies at some point, and so does the cluster leader (on
    ZooKeeper each follower then drops its clients until a new leader is elected): the client
    must fail over and the child must never be stopped."""
    job, pid_file, done = long_job(tmp_path, ignore_term=False)
    proc = start(processes, store_cluster3, election, *job, opts=("--ttl", "10s"), verbose=2)
    child = child_pid(pid_file)
    for member in store_cluster3.members:
        member.kill()
        store_cluster3.wait_healthy()
        member.start()
        store_cluster3.wait_healthy()
        assert alive(child) and proc.poll() is None, f"child stopped after {member!r} died"
    # Let the last lease deadline that predates the faults pass with the child still running.
    last_fault = time.monotonic()
    wait_for(lambda: time.monotonic() > last_fault + 10 or not alive(child), 15)
    assert alive(child) and proc.poll() is None
    done.touch()
    assert wait_exit(proc) == 0
    assert "WARNING" not in proc.read_stderr()


# -- nemesis: random faults, an independent checker, a report ---------------------------------
# `make chaos` runs each backend CHAOS_SECONDS (default 300 s); `make test` runs a 60 s seeded
# run per backend (marker `nemesis_short`). Reports go to chaos-report/ (JSON, text, PNG).

SHORT_SEED = "1201"


def _nemesis_run(
    store: EtcdCluster | ZkEnsemble,
    tmp_path: Path,
    seconds: float,
    seed: str,
    name: str,
    holders: int = 1,
) -> Result:
    """k = holders + 2 candidates under random faults; with `holders` > 1 they run with
    `--max-holders` and the checker applies the semaphore's rule (per slot, at most N)."""
    adapter = StoreAdapter(store)
    faults = faults_from_env(DEFAULT_FAULTS + PARTITION_FAULTS)
    k = holders + 2
    parts = None
    if any(f in PARTITION_FAULTS for f in faults):
        scheme = store.backend_url.split("://", 1)[0]
        endpoints = [m.endpoint for m in store.members]
        parts = Partitions(scheme, endpoints, [f"c{i}" for i in range(k)])
    nem = Nemesis(
        adapter, tmp_path, seed, seconds, faults=faults, k=k, holders=holders,
        backend_for=parts.backend_for if parts else None,
        partitioner=parts.partition if parts else None,
    )  # fmt: skip
    try:
        result = nem.run()
    finally:
        if parts:
            parts.close()
    text = nem.report(result, name)
    print(text)
    print("\n".join(nem.log))
    return result


def _assert_clean(result: Result) -> None:
    assert result.terms >= 2, "the nemesis run never changed leader: nothing was tested"
    details = [f"{v.kind}: {v.message}; fault: {v.fault}" for v in result.violations]
    assert result.ok, "\n".join(details)


def _etcd3(tmp_path: Path) -> EtcdCluster:
    cluster = EtcdCluster(tmp_path / "etcd", size=3)
    cluster.start()
    return cluster


def _zk3(tmp_path: Path) -> ZkEnsemble:
    ensemble = ZkEnsemble(tmp_path / "zk", size=3)
    ensemble.start()
    return ensemble


def _nemesis_on_fresh_cluster(
    backend: str, tmp_path: Path, seconds: float, seed: str, name: str, holders: int = 1
) -> None:
    """A 3-member cluster/ensemble of its own, the nemesis run on it, no violation allowed."""
    store = _etcd3(tmp_path) if backend == "etcd" else _zk3(tmp_path)
    try:
        result = _nemesis_run(store, tmp_path, seconds, seed, name, holders=holders)
    finally:
        store.stop()
    _assert_clean(result)


def _short_seed() -> str:
    return os.environ.get("CHAOS_SEED", SHORT_SEED)


@pytest.mark.chaos
@pytest.mark.timeout(0)
@pytest.mark.parametrize("backend", ["etcd", "zk"])
def test_nemesis_long(backend: str, tmp_path: Path) -> None:
    """CHAOS_SECONDS (default 300) of random faults per backend: no two terms' jobs at once."""
    _nemesis_on_fresh_cluster(backend, tmp_path, chaos_seconds(300), chaos_seed(), backend)


@pytest.mark.nemesis_short
@pytest.mark.timeout(150)
@pytest.mark.parametrize("backend", ["etcd", "zk"])
def test_nemesis_short(backend: str, tmp_path: Path) -> None:
    """The CI run: 60 s of seeded faults per backend, failing on any violation."""
    seconds = float(os.environ.get("CHAOS_SHORT_SECONDS", 60))
    _nemesis_on_fresh_cluster(backend, tmp_path, seconds, _short_seed(), f"{backend}-short")


@pytest.mark.chaos
@pytest.mark.timeout(0)
@pytest.mark.parametrize("backend", ["etcd", "zk"])
def test_nemesis_long_max_holders(backend: str, tmp_path: Path) -> None:
    """Half of CHAOS_SECONDS of random faults on 4 candidates with `--max-holders 2`: never two
    terms of one slot at once, never more than two terms at once."""
    seconds = chaos_seconds(300) / 2
    _nemesis_on_fresh_cluster(backend, tmp_path, seconds, chaos_seed(), f"{backend}-n2", 2)


@pytest.mark.nemesis_short
@pytest.mark.timeout(150)
@pytest.mark.parametrize("backend", ["etcd", "zk"])
def test_nemesis_short_max_holders(backend: str, tmp_path: Path) -> None:
    """The CI run of `--max-holders 2`: 30 s of seeded faults per backend."""
    _nemesis_on_fresh_cluster(backend, tmp_path, 30, _short_seed(), f"{backend}-n2-short", 2)
