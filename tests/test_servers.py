"""The test fixtures themselves work against real etcd and ZooKeeper (so other failures mean
leaderrun)."""

from __future__ import annotations

import os
import re
import signal
import sys

import pytest
from helpers import ProcessRegistry, wait_for
from kazoo.client import KazooClient
from servers import EtcdCluster, ZkEnsemble, four_letter, free_port, run_etcdctl


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


# -- ZooKeeper ------------------------------------------------------------------------------------


def test_zk_serves_on_its_own_loopback_port(zk: ZkEnsemble, election: str) -> None:
    assert zk.backend_url == f"zk://{zk.endpoints}"
    assert all(m.endpoint.startswith("127.0.0.1:") and m.client_port != 2181 for m in zk.members)
    assert zk.leader().mode() == "standalone"
    client = KazooClient(hosts=zk.endpoints)
    client.start(timeout=10)
    try:
        client.create(f"/leaderrun-tests/{election}", b"hello", makepath=True, ephemeral=True)
        assert client.get(f"/leaderrun-tests/{election}")[0] == b"hello"
        assert client.client_id is not None
        assert client.client_id[0] in (zk.members[0].sessions() or set())
    finally:
        client.stop()
        client.close()


def test_zk_ensemble3_has_one_leader(zk_ensemble3: ZkEnsemble) -> None:
    modes = sorted(str(m.mode()) for m in zk_ensemble3.members)
    assert modes == ["follower", "follower", "leader"]
    assert zk_ensemble3.leader().mode() == "leader"


def test_zk_restart_keeps_data_and_freeze_stops_answers(zk_private: ZkEnsemble) -> None:
    member = zk_private.members[0]
    client = KazooClient(hosts=zk_private.endpoints)
    client.start(timeout=10)
    try:
        client.create("/k", b"kept")
    finally:
        client.stop()
        client.close()
    member.restart(0.2)
    member.freeze()
    assert four_letter(member.endpoint, "ruok", timeout=0.5) is None
    assert member.is_running()  # frozen, not dead
    member.thaw()
    member.wait_serving()
    client = KazooClient(hosts=zk_private.endpoints)
    client.start(timeout=10)
    try:
        assert client.get("/k")[0] == b"kept"
    finally:
        client.stop()
        client.close()
