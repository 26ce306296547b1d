"""The test fixtures themselves work against real etcd (so other failures mean leaderrun)."""

from __future__ import annotations

import os
import re
import signal
import sys

import pytest
from helpers import ProcessRegistry, wait_for
from servers import EtcdCluster, free_port, run_etcdctl


def test_put_get(etcd: EtcdCluster, election: str) -> None:
    key = f"/leaderrun-tests/{election}"
    etcd.etcdctl("put", key, "hello")
    assert etcd.etcdctl("get", key, "--print-value-only").stdout.strip() == "hello"
    assert etcd.backend_url == f"etcd://{etcd.endpoints}"
    assert all(m.endpoint.startswith("127.0.0.1:") for m in etcd.members)
    assert all(m.client_port != 2379 for m in etcd.members)  # never a system etcd


def test_election_name_is_valid_and_unique(election: str) -> None:
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,128}", election)
    assert election.startswith("t-test_election_name_is_valid_and_unique-")


def test_free_ports_are_distinct() -> None:
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports)


def test_cluster3_has_a_raft_leader(etcd_cluster3: EtcdCluster, election: str) -> None:
    assert len(etcd_cluster3.members) == 3
    assert etcd_cluster3.backend_url.count(",") == 2
    leader = etcd_cluster3.raft_leader()
    assert leader in etcd_cluster3.members
    assert leader.is_running()
    # A write through one member is readable through every other.
    etcd_cluster3.etcdctl("put", f"/leaderrun-tests/{election}", "v")
    for m in etcd_cluster3.members:
        res = run_etcdctl(m.endpoint, "get", f"/leaderrun-tests/{election}", "--print-value-only")
        assert res.stdout.strip() == "v", m


def test_restart_keeps_data(etcd_private: EtcdCluster) -> None:
    etcd_private.etcdctl("put", "/k", "kept")
    member = etcd_private.members[0]
    port, pid = member.client_port, member.proc.pid if member.proc else None
    member.restart(1.0)
    assert member.is_running()
    assert member.proc is not None and member.proc.pid != pid
    assert member.client_port == port
    assert etcd_private.etcdctl("get", "/k", "--print-value-only").stdout.strip() == "kept"


def test_kill_then_start(etcd_private: EtcdCluster) -> None:
    etcd_private.etcdctl("put", "/k", "v")
    member = etcd_private.members[0]
    member.kill()
    assert not member.is_running()
    member.start()
    assert etcd_private.etcdctl("get", "/k", "--print-value-only").stdout.strip() == "v"


def test_freeze_and_thaw(etcd_private: EtcdCluster) -> None:
    etcd_private.etcdctl("put", "/k", "v")
    member = etcd_private.members[0]
    member.freeze()
    frozen = etcd_private.etcdctl(
        "get", "/k", "--command-timeout=1s", "--dial-timeout=1s", check=False
    )
    assert frozen.returncode != 0
    assert member.is_running()  # frozen, not dead
    member.thaw()
    got = etcd_private.etcdctl("get", "/k", "--print-value-only", "--command-timeout=1s")
    assert got.stdout.strip() == "v"


def test_processes_capture_and_cleanup(processes: ProcessRegistry) -> None:
    p = processes.start(
        [sys.executable, "-c", "import sys,time; print('out'); print('err', file=sys.stderr);"
         " sys.stdout.flush(); time.sleep(60)"],
        start_new_session=True,
    )  # fmt: skip
    wait_for(lambda: "out" in p.read_stdout(), 10, message="child output")
    assert p.read_stderr().strip() == "err"
    processes.kill_all()
    assert p.returncode == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.killpg(p.pid, 0)


def test_wait_for_times_out_with_message() -> None:
    with pytest.raises(TimeoutError, match="the impossible"):
        wait_for(lambda: False, 0.2, message="the impossible")
    assert wait_for(lambda: 42, 1) == 42
