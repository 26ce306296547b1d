"""Fixtures: real etcd and ZooKeeper servers, unique election names, and subprocesses that
cannot leak.

Scopes follow cost and isolation: tests that only need a working store share one
session-wide server (unique election names keep them apart); tests that freeze, restart or
kill the server get their own; the 3-member cluster/ensemble is shared per module.

The contract suite asks for `store`, `store_private` or `store_cluster3`: the same fixtures
parametrized over both backends ("etcd", "zk"), giving the server wrapped in a `Store` probe.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from helpers import LEADERRUN_CMD, ProcessRegistry
from servers import EtcdCluster, ZkEnsemble
from stores import Store, store_for
from zk_partition import PartitionedZkEnsemble

BACKENDS = ("etcd", "zk")


Server = TypeVar("Server", EtcdCluster, ZkEnsemble, PartitionedZkEnsemble)


def _running(server: Server) -> Iterator[Server]:
    """Start `server` for a fixture and stop it after, whatever the tests did."""
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _cluster(tmp: Path, size: int) -> Iterator[EtcdCluster]:
    yield from _running(EtcdCluster(tmp, size=size))


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One single-member etcd shared by the whole session. Do not freeze, stop or kill it."""
    yield from _cluster(tmp_path_factory.mktemp("etcd-shared"), 1)


@pytest.fixture
def etcd_private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A single-member etcd for one test, which may freeze, restart or kill it."""
    yield from _cluster(tmp_path_factory.mktemp("etcd-private"), 1)


@pytest.fixture(scope="module")
def etcd_cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A 3-member etcd cluster shared by one test module.

    A test that stops or freezes members must bring them back (``start``/``thaw``) and
    ``wait_healthy`` before it ends, so the next test of the module finds a whole cluster.
    """
    yield from _cluster(tmp_path_factory.mktemp("etcd-cluster3"), 3)


def _ensemble(tmp: Path, size: int, **options: int) -> Iterator[ZkEnsemble]:
    yield from _running(ZkEnsemble(tmp, size=size, **options))


@pytest.fixture(scope="session")
def zk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZkEnsemble]:
    """One standalone ZooKeeper shared by the whole session. Do not freeze, stop or kill it."""
    yield from _ensemble(tmp_path_factory.mktemp("zk-shared"), 1)


@pytest.fixture
def zk_private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZkEnsemble]:
    """A standalone ZooKeeper for one test, which may freeze, restart or kill it."""
    yield from _ensemble(tmp_path_factory.mktemp("zk-private"), 1)


@pytest.fixture(scope="module")
def zk_ensemble3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZkEnsemble]:
    """A 3-server ZooKeeper ensemble shared by one test module (same rules as etcd_cluster3)."""
    yield from _ensemble(tmp_path_factory.mktemp("zk-ensemble3"), 3)


@pytest.fixture(scope="module")
def zk_partitioned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PartitionedZkEnsemble]:
    """A 3-server ZooKeeper ensemble whose members can be cut off from each other
    (tickTime 500 ms, syncLimit 10), one per test module: a module's partition test comes last
    or heals it."""
    yield from _running(
        PartitionedZkEnsemble(tmp_path_factory.mktemp("zk-partitioned"), sync_limit=10)
    )


@pytest.fixture(scope="session", params=BACKENDS)
def store(request: pytest.FixtureRequest) -> Store:
    """The shared server of each backend in turn (`etcd`, `zk`), as a `Store` probe."""
    return store_for(request.getfixturevalue(request.param))


@pytest.fixture(params=BACKENDS)
def store_private(request: pytest.FixtureRequest) -> Store:
    """A private single server of each backend in turn, which the test may break."""
    return store_for(request.getfixturevalue(f"{request.param}_private"))


@pytest.fixture(scope="module", params=BACKENDS)
def store_cluster3(request: pytest.FixtureRequest) -> Store:
    """A 3-member etcd cluster, then a 3-server ZooKeeper ensemble."""
    name = "etcd_cluster3" if request.param == "etcd" else "zk_ensemble3"
    return store_for(request.getfixturevalue(name))


@pytest.fixture
def election(request: pytest.FixtureRequest) -> str:
    """An election name unique to this test run: ``t-<test name>-<4 hex>`` (SPEC-valid)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", request.node.name)[:100]
    return f"t-{name}-{secrets.token_hex(2)}"


@pytest.fixture
def leaderrun_cmd() -> list[str]:
    """argv prefix running the CLI under test as a real subprocess; append options to it."""
    return list(LEADERRUN_CMD)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ProcessRegistry]:
    """Starts subprocesses for the test and SIGKILLs whatever is left of them afterwards."""
    log_dir = tmp_path / "proc-logs"
    log_dir.mkdir()
    registry = ProcessRegistry(log_dir)
    try:
        yield registry
    finally:
        registry.kill_all()
