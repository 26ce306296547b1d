"""What only etcd has: its key layout and create-revision token, and interoperability with
etcd's own election tool (`etcdctl elect`). Everything else runs on both backends in
test_contract.py."""

from __future__ import annotations

import base64
import json
import os
import signal
from pathlib import Path

from helpers import LEADERRUN_CMD, ProcessRegistry, wait_for
from runs import sh, start, wait_exit
from servers import EtcdCluster
from stores import PREFIX, EtcdStore


def test_token_is_create_revision_of_leader_key_named_by_lease(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    env_file, kv_file = tmp_path / "env", tmp_path / "kv.json"
    job = sh(
        f"env > {env_file}; "
        f"ETCDCTL_API=3 etcdctl --endpoints {etcd.endpoints} get --prefix "
        f"{PREFIX}/{election}/ -w json > {kv_file}"
    )
    argv = [*LEADERRUN_CMD, "--backend", etcd.backend_url, "-e", election, "--id", "node-x"]
    proc = processes.start([*argv, "--", *job])
    assert wait_exit(proc) == 0

    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    (kv,) = json.loads(kv_file.read_text())["kvs"]
    assert env["LEADERRUN_FENCING_TOKEN"] == str(kv["create_revision"])
    lease_hex = f"{int(kv['lease']):x}"
    assert base64.b64decode(kv["key"]).decode() == f"{PREFIX}/{election}/{lease_hex}"


def test_etcdctl_elect_listen_reports_our_leader(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    listen_out = tmp_path / "listen.out"
    env = {**os.environ, "ETCDCTL_API": "3"}
    # A step-down request (SPEC §7) stored first: etcdctl must not take it for a candidate.
    EtcdStore(etcd).write_step_down_request(election, token=1)
    processes.start(
        ["etcdctl", "--endpoints", etcd.endpoints, "elect", "--listen", f"{PREFIX}/{election}"],
        stdout=listen_out.open("wb"),
        env=env,
    )
    # The child finishes only once etcdctl has printed our identity as the leader.
    job = sh(f'while ! grep -q "\\"id\\":\\"$LEADERRUN_ID\\"" {listen_out}; do sleep 0.05; done')
    proc = start(processes, etcd, election, *job, opts=("--id", "interop-node"))
    assert wait_exit(proc) == 0
    assert f"{PREFIX}/{election}/" in listen_out.read_text()
    assert "test-operator" not in listen_out.read_text()


def test_waits_behind_an_etcdctl_elect_leader(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    store = EtcdStore(etcd)
    env = {**os.environ, "ETCDCTL_API": "3"}
    holder = processes.start(
        ["etcdctl", "--endpoints", etcd.endpoints, "elect", f"{PREFIX}/{election}", "someone"],
        env=env,
        name="etcdctl-elect",
    )
    wait_for(lambda: store.queued(election, 1), 15)
    ran = tmp_path / "ran"
    proc = start(processes, etcd, election, "touch", str(ran))
    wait_for(lambda: "waiting behind <foreign value 'someone'>" in proc.read_stderr(), 15)
    assert not ran.exists()
    holder.send_signal(signal.SIGINT)  # etcdctl resigns on interrupt
    assert wait_exit(proc) == 0
    assert ran.exists()


def test_no_write_of_an_ended_term_can_leave_a_key_without_a_lease(
    etcd: EtcdCluster, election: str
) -> None:
    """Defect 5: the first wave re-read the backend's *current* lease for a retried announce;
    after resign that was None, and the key was written with lease 0 (never to expire, nobody
    elected again). Each term's writes now carry that term's own lease and are guarded by it."""
    from leaderrun.backends import Flag
    from leaderrun.backends.etcd import EtcdBackend
    from leaderrun.settings import Settings, build_timing, parse_backend_url

    settings = Settings(
        backend=parse_backend_url(etcd.backend_url),
        election=election,
        prefix=PREFIX,
        identity="unit",
        timing=build_timing(ttl=10.0, kill_grace=1.0, renew_interval=None),
        connect_timeout=5.0,
        command=("true",),
    )
    backend = EtcdBackend(settings)
    try:
        backend.connect()
        term = backend.campaign(b"ours", Flag())
        assert term is not None and term.elected
        assert backend.resign(term) is True
        backend.announce(term, b"late announcement")
        # Even a write that races the resign is guarded by the term's own key and lease.
        term.lost = type(term.lost)()
        backend.announce(term, b"racing announcement")
        assert EtcdStore(etcd).candidates(election) == []
        store_keys = etcd.etcdctl("get", "--prefix", f"{PREFIX}/{election}/", "--keys-only")
        assert store_keys.stdout.strip() == ""
    finally:
        backend.close()
