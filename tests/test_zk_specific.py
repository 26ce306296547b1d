"""What only ZooKeeper has: kazoo's election layout (interop both ways), czxid tokens, the
session timeout the server negotiates, connection SUSPENDED/reconnect, the chroot, and
digest auth with ACLs.
Everything else runs on both backends in test_contract.py and test_faults.py."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from helpers import LEADERRUN_CMD, ProcessRegistry, clean_env, wait_for
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.recipe.election import Election
from runs import alive, child_pid, long_job, sh, start, wait_exit
from servers import ZkEnsemble, ZkMember, four_letter
from stores import PREFIX, ZkStore

NODE_NAME = re.compile(r"[0-9a-f]{32}__lock__\d{10}")


def kazoo(ensemble: ZkEnsemble) -> AbstractContextManager[KazooClient]:
    """A short-lived kazoo client of the test's own (the store probe's)."""
    return ZkStore(ensemble).client()


def test_kazoo_election_contenders_lists_our_candidates_in_order(
    zk: ZkEnsemble, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    store = ZkStore(zk)
    release = tmp_path / "release"
    job = sh(f"while [ ! -e {release} ]; do sleep 0.02; done")
    runs = []
    for n, ident in enumerate(["a", "b", "c"], start=1):
        runs.append(start(processes, zk, election, *job, opts=("--id", ident), name=ident))
        wait_for(lambda n=n: store.queued(election, n), 15, message=f"{n} candidates queued")

    with kazoo(zk) as client:
        contenders = Election(client, f"{PREFIX}/{election}").contenders()
        nodes = client.get_children(f"{PREFIX}/{election}")
    assert [json.loads(c)["id"] for c in contenders] == ["a", "b", "c"]
    assert len(nodes) == 3 and all(NODE_NAME.fullmatch(n) for n in nodes), nodes
    release.touch()
    assert [wait_exit(p) for p in runs] == [0, 0, 0]


def test_waits_behind_a_kazoo_election_leader(
    zk: ZkEnsemble, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """A kazoo `Election` holder leads; we queue behind it and run once it gives up."""
    store = ZkStore(zk)
    leading, give_up = threading.Event(), threading.Event()

    def lead() -> None:
        leading.set()
        give_up.wait(60)

    with kazoo(zk) as client:
        holder = Election(client, f"{PREFIX}/{election}", "someone")
        thread = threading.Thread(target=holder.run, args=(lead,), daemon=True)
        thread.start()
        assert leading.wait(15)
        ran = tmp_path / "ran"
        proc = start(processes, zk, election, "touch", str(ran))
        wait_for(lambda: "waiting behind <foreign value 'someone'>" in proc.read_stderr(), 15)
        holder_first, _ours = store.candidates(election)
        assert holder_first.identity == "someone"
        assert not ran.exists()
        give_up.set()  # the kazoo leader's function returns: it releases the lock
        thread.join(15)
        assert wait_exit(proc) == 0
    assert ran.exists()


def test_token_is_czxid_of_our_ephemeral_leader_node_and_increases(
    zk: ZkEnsemble, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    seen = []
    for term in range(2):
        token_file, go = tmp_path / f"token{term}", tmp_path / f"go{term}"
        job = sh(
            f"echo $LEADERRUN_FENCING_TOKEN > {token_file}.tmp; mv {token_file}.tmp {token_file}; "
            f"while [ ! -e {go} ]; do sleep 0.02; done"
        )
        proc = start(processes, zk, election, *job, name=f"term{term}")
        wait_for(token_file.exists, 15, message="token written")
        with kazoo(zk) as client:
            (node,) = client.get_children(f"{PREFIX}/{election}")
            _, stat = client.get(f"{PREFIX}/{election}/{node}")
        assert int(token_file.read_text()) == stat.czxid
        assert stat.ephemeralOwner != 0  # ephemeral: it lives and dies with the session
        seen.append(stat.czxid)
        go.touch()
        assert wait_exit(proc) == 0
    assert seen[0] < seen[1]


@pytest.fixture
def zk_clamping(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZkEnsemble]:
    """A ZooKeeper that grants at most 6 s sessions (maxSessionTimeout)."""
    ensemble = ZkEnsemble(tmp_path_factory.mktemp("zk-clamp"), 1, max_session_ms=6000)
    ensemble.start()
    try:
        yield ensemble
    finally:
        ensemble.stop()


def test_clamped_session_timeout_is_reported_and_the_timing_rule_uses_it(
    zk_clamping: ZkEnsemble, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """Asked for 20 s, granted 6 s: the child sees 6, leaderrun says so, and a frozen server
    stops the child before `freeze + 6 s - safety` (not `freeze + 20 s - safety`)."""
    env_file = tmp_path / "ttl"
    pid_file = tmp_path / "pid"
    job = sh(
        f"echo $LEADERRUN_LEASE_TTL > {env_file}; trap '' TERM; echo $$ > {pid_file}; "
        "while :; do sleep 0.05; done"
    )
    opts = ("--ttl", "20s", "--kill-grace", "1s", "--renew-interval", "1s")
    proc = start(processes, zk_clamping, election, *job, opts=opts)
    child = child_pid(pid_file)
    assert env_file.read_text().strip() == "6"
    assert "granted a session timeout of 6s (asked 20s)" in proc.read_stderr()

    member = zk_clamping.members[0]
    frozen_at = time.monotonic()
    member.freeze()
    wait_for(lambda: not alive(child), 15, interval=0.01, message="child stopped")
    dead_seen_at = time.monotonic()
    member.thaw()
    assert dead_seen_at <= frozen_at + 6.0 - 0.5, f"alive {dead_seen_at - frozen_at:.2f}s"
    assert wait_exit(proc, 60) == 75


def test_server_crash_shorter_than_the_margin_suspends_and_keeps_the_child(
    zk_private: ZkEnsemble, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """SIGKILL the only server and start it again: kazoo goes SUSPENDED at once, reconnects
    to the same session within the capped backoff, and the child never notices."""
    job, pid_file, done = long_job(tmp_path, ignore_term=False)
    proc = start(processes, zk_private, election, *job, opts=("--ttl", "10s"))
    child = child_pid(pid_file)
    member = zk_private.members[0]

    crashed_at = time.monotonic()
    member.kill()
    wait_for(lambda: "SUSPENDED" in proc.read_stderr(), 5, interval=0.01, message="suspended")
    member.start()
    wait_for(lambda: "session" in proc.read_stderr() and "kept" in proc.read_stderr(), 15)
    reconnected = re.search(r"reconnected to ZooKeeper after (\d+\.\d+)s", proc.read_stderr())
    assert reconnected is not None
    # Past the deadline as of the crash: only renewals in the same session keep it running.
    wait_for(lambda: time.monotonic() > crashed_at + 10.0 or not alive(child), 15)
    assert alive(child) and proc.poll() is None

    done.touch()
    assert wait_exit(proc) == 0
    assert "WARNING" not in proc.read_stderr()


def test_chroot_holds_the_elections_and_is_created_when_missing(
    zk: ZkEnsemble, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    chroot = f"/chroot-{election}/jobs"
    url = f"{zk.backend_url}{chroot}"
    env_file, go = tmp_path / "env", tmp_path / "go"
    job = sh(
        f"echo $LEADERRUN_BACKEND > {env_file}.tmp; mv {env_file}.tmp {env_file}; "
        f"while [ ! -e {go} ]; do sleep 0.02; done"
    )
    argv = [*LEADERRUN_CMD, "--backend", url, "-e", election, "--id", "rooted", "--", *job]
    proc = processes.start(argv)
    wait_for(env_file.exists, 15, message="child started")
    assert env_file.read_text().strip() == url
    with kazoo(zk) as client:
        assert len(client.get_children(f"{chroot}{PREFIX}/{election}")) == 1
        assert client.exists(f"{PREFIX}/{election}") is None  # nothing outside the chroot

    status = subprocess.run(
        [*LEADERRUN_CMD, "status", "--backend", url, "--json", election],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["elections"][0]["leader"]["id"] == "rooted"
    go.touch()
    assert wait_exit(proc) == 0


def test_granted_session_timeout_too_short_for_the_timing_rule_is_refused(
    zk_clamping: ZkEnsemble, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """20 s asked with a 5 s kill grace fits; the 6 s the server grants does not: exit 2
    before anything runs, naming what to change, and nothing is left in the queue."""
    ran = tmp_path / "ran"
    opts = ("--ttl", "20s", "--kill-grace", "5s")
    proc = start(processes, zk_clamping, election, "touch", str(ran), opts=opts)
    assert wait_exit(proc) == 2
    err = proc.read_stderr()
    assert "granted a session timeout of 6s" in err and "maxSessionTimeout" in err
    assert "Traceback" not in err and not ran.exists()
    assert ZkStore(zk_clamping).candidates(election) == []


def test_auth_file_lets_only_that_identity_change_our_nodes(
    zk: ZkEnsemble, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """With --zk-auth-file, our nodes carry a digest ACL: anyone may read (status works),
    only that identity may delete candidates or write the record; refusals exit 77."""
    secret = "s3cret-pw"
    auth = tmp_path / "zk-auth"
    auth.write_text(f"jobs:{secret}\n")
    auth.chmod(0o600)
    other = tmp_path / "other-auth"
    other.write_text("intruder:nope\n")
    other.chmod(0o600)
    job, pid_file, _ = long_job(tmp_path, ignore_term=False)
    proc = start(processes, zk, election, *job, opts=("--zk-auth-file", str(auth)))
    pid = child_pid(pid_file)
    store = ZkStore(zk)
    (leader,) = store.candidates(election)

    with kazoo(zk) as client:
        with pytest.raises(NoAuthError):
            client.delete(leader.key)
        with pytest.raises(NoAuthError):
            client.set(f"{PREFIX}/{election}", b"forged record")

    def operator(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*LEADERRUN_CMD, args[0], "--backend", zk.backend_url, *args[1:]],
            env=clean_env(), capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    assert operator("status", "--json", election).returncode == 0
    refused = operator("step-down", election)
    assert refused.returncode == 77 and len(refused.stderr.strip().splitlines()) == 1
    intruder = start(processes, zk, election, "true", opts=("--zk-auth-file", str(other)))
    assert wait_exit(intruder) == 77
    assert alive(pid) and [c.key for c in store.candidates(election)] == [leader.key]

    assert operator("step-down", "--zk-auth-file", str(auth), election).returncode == 0
    assert wait_exit(proc) == 75
    outputs = [p.read_stderr() + p.read_stdout() for p in (proc, intruder)]
    assert all(secret not in out for out in [*outputs, refused.stderr, refused.stdout])


def connected_member(ensemble: ZkEnsemble, session_id: int) -> ZkMember:
    """The server that holds the client connection of `session_id` (4lw `cons`)."""
    for member in ensemble.live_members():
        if f"sid=0x{session_id:x}" in (four_letter(member.endpoint, "cons") or ""):
            return member
    raise AssertionError(f"no server holds a connection of session {session_id:x}")


def test_frozen_server_of_our_connection_is_left_for_another_member(
    zk_ensemble3: ZkEnsemble, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """The member leaderrun is connected to hangs (SIGSTOP) for longer than T: kazoo alone
    would wait on it for ever, as our renewals keep the connection busy; leaderrun drops the
    connection when a renewal goes unanswered and the session moves to a live member."""
    job, pid_file, done = long_job(tmp_path, ignore_term=False)
    proc = start(processes, zk_ensemble3, election, *job, opts=("--ttl", "10s"))
    child = child_pid(pid_file)
    session = ZkStore(zk_ensemble3).leader_handle(election)
    member = connected_member(zk_ensemble3, session)

    frozen_at = time.monotonic()
    member.freeze()
    try:
        wait_for(lambda: "reconnected to ZooKeeper" in proc.read_stderr(), 10)
        # Past the deadline as of the freeze: only a renewal through another member keeps it.
        wait_for(lambda: time.monotonic() > frozen_at + 10.0 or not alive(child), 15)
        assert alive(child) and proc.poll() is None
        assert connected_member(zk_ensemble3, session) is not member
    finally:
        member.thaw()
        zk_ensemble3.wait_healthy()
    done.touch()
    assert wait_exit(proc) == 0
    assert "WARNING" not in proc.read_stderr()
