"""Fixtures: real etcd servers, unique election names, and subprocesses that cannot leak.

Scopes follow cost and isolation: tests that only need a working store share one
session-wide server (unique election names keep them apart); tests that freeze, restart or
kill the server get their own; the 3-member cluster is shared per module.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import LEADERRUN_CMD, ProcessRegistry
from servers import EtcdCluster


def _cluster(tmp: Path, size: int) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp, size=size)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


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
