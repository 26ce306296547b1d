"""What only ZooKeeper has: kazoo's election layout (interop both ways), czxid tokens, the
session timeout the server negotiates, connection SUSPENDED/reconnect, the chroot, and
digest auth with ACLs; and, as units against a real server, what the CLI cannot reach: a
session that changes while our node is created, a release the server never confirmed, and a
campaign cancelled during an outage.
Everything else runs on both backends in test_contract.py and test_faults.py."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from helpers import LEADERRUN_CMD, ProcessRegistry, clean_env, wait_for
from kazoo.client import KazooClient
from kazoo.exceptions import ConnectionLoss, NoAuthError
from kazoo.recipe.election import Election
from runs import alive, child_pid, long_job, sh, start, wait_exit
from servers import ZkEnsemble, ZkMember, four_letter
from stores import PREFIX, ZkStore, step_down_value

from leaderrun.backends import Cancelled, Flag, Term
from leaderrun.backends.zookeeper import NODE_MARK, ZkTerm, ZooKeeperBackend
from leaderrun.settings import Settings, build_timing, parse_backend_url

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

    # A step-down request node (SPEC §7) is no contender.
    store.write_step_down_request(election, token=1)
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
    # The server is shared: were this the first run to create the prefix node, it would get
    # this identity's ACL too and refuse every later test's elections.
    with kazoo(zk) as client:
        client.ensure_path(PREFIX)
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
    # Nor does a request written around leaderrun, in a request node others may write.
    request_node = f"{PREFIX}/@step-down/{election}"
    with kazoo(zk) as client:
        client.delete(request_node)
        client.create(request_node, step_down_value(leader.token))
    wait_for(lambda: "ignoring a step-down request" in proc.read_stderr(), 15)
    wait_for(lambda: store.step_down_request(election) is None, 15, message="request replaced")
    assert alive(pid) and proc.poll() is None
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


# -- the backend as a unit, against a real server ----------------------------------------------


def unit_settings(ensemble: ZkEnsemble, election: str, ttl: float = 10.0) -> Settings:
    return Settings(
        backend=parse_backend_url(ensemble.backend_url),
        election=election,
        prefix=PREFIX,
        identity="unit",
        timing=build_timing(ttl=ttl, kill_grace=1.0, renew_interval=None),
        connect_timeout=5.0,
        command=("true",),
    )


@contextmanager
def unit_backend(
    ensemble: ZkEnsemble, election: str, ttl: float = 10.0
) -> Iterator[ZooKeeperBackend]:
    backend = ZooKeeperBackend(unit_settings(ensemble, election, ttl))
    try:
        yield backend
    finally:
        backend.close()


def expire_session(ensemble: ZkEnsemble, client_id: tuple[int, bytes]) -> None:
    """End a session on the server for real: take it over with its id and password, close it."""
    other = KazooClient(hosts=ensemble.endpoints, client_id=client_id, timeout=10.0)
    other.start(timeout=10)
    other.stop()
    other.close()


def queue_names(ensemble: ZkEnsemble, election: str) -> list[str]:
    with kazoo(ensemble) as client:
        return sorted(client.get_children(f"{PREFIX}/{election}"))


def test_session_change_while_our_node_is_created_never_queues_us_behind_our_own_node(
    zk: ZkEnsemble, election: str
) -> None:
    """Defect 6: the create lands, its answer is lost, the session expires and kazoo opens a
    new one, where the retried create lands again. The first wave then waited with a new
    uuid behind that node of its own, for ever (the duplicate clean-up matched only the new
    uuid). Now a new session ends the term: its nodes go, and a new term leads at once."""
    sabotaged: list[ZkTerm] = []

    def sabotage(term: Term) -> None:
        assert isinstance(term, ZkTerm)
        if sabotaged:
            return
        sabotaged.append(term)
        client = term.client
        real_create = client.create_async

        def create_async(path: str, value: bytes = b"", **options: object) -> object:
            if not options.get("sequence"):  # kazoo's ensure_path, on its own thread
                return real_create(path, value, **options)
            client.create_async = real_create  # only our first node's create is sabotaged
            real_create(path, value, **options).get(5)  # lands in the term's session
            old = client.client_id
            expire_session(zk, old)
            wait_for(
                lambda: client.client_id is not None and client.client_id[0] != old[0],
                15,
                message="kazoo in a new session",
            )
            real_create(path, value, **options).get(5)  # the retry lands in the new one
            answer = client.handler.async_result()
            answer.set_exception(ConnectionLoss())  # and its answer, too, is lost
            return answer

        client.create_async = create_async

    with unit_backend(zk, election) as backend:
        backend.on_queued = sabotage
        backend.connect()
        started = time.monotonic()
        term = backend.campaign(b"ours", Flag())
        took = time.monotonic() - started

        assert term is not None and term.elected and term.node is not None
        (first,) = sabotaged
        assert first.lost.is_set() and "session" in first.lost_reason
        assert term.session_id != first.session_id and term.prefix != first.prefix
        # Alone in the queue: no node of the first term's uuid waits ahead (or behind) us.
        assert queue_names(zk, election) == [term.node.rsplit("/", 1)[1]]
        with kazoo(zk) as client:
            _, stat = client.get(term.node)
        assert stat.ephemeralOwner == term.session_id and stat.czxid == term.token
        assert took < 10.0, f"led only after {took:.1f}s: waited for a session to expire"
        assert backend.resign(term) is True
        assert queue_names(zk, election) == []


def test_release_the_server_did_not_confirm_is_reported_and_never_waited_behind(
    zk_private: ZkEnsemble, election: str
) -> None:
    """Defect 7: the delete of our node timed out while the server was frozen, the first wave
    logged "released" and campaigned again in the same live session, its stale node first in
    the queue (nobody led for 24 s). Now `resign` says False, and the next campaign is in a
    new session and leads long before the old session could expire."""
    ttl = 20.0
    member = zk_private.members[0]
    store = ZkStore(zk_private)
    with unit_backend(zk_private, election, ttl=ttl) as backend:
        backend.connect()
        term = backend.campaign(b"first", Flag())
        assert term is not None and term.elected and term.node is not None

        member.freeze()
        try:
            asked = time.monotonic()
            released = backend.resign(term)
            took = time.monotonic() - asked
        finally:
            member.thaw()
        assert released is False and not term.released
        assert term.lost.is_set()
        assert took < 6.0, f"resign took {took:.1f}s"

        zk_private.wait_healthy()
        asked = time.monotonic()
        second = backend.campaign(b"second", Flag())
        took = time.monotonic() - asked
        assert second is not None and second.elected and second.node is not None
        assert second.session_id != term.session_id
        assert took < ttl / 2, f"led only after {took:.1f}s: waited behind our old node"
        assert [c.key for c in store.candidates(election)] == [second.node]
        assert not any(name.startswith(term.prefix) for name in queue_names(zk_private, election))
        assert backend.resign(second) is True
        assert store.candidates(election) == []
    # The old session did not outlive its timeout (closed late, or expired).
    wait_for(lambda: store.released(term.session_id), ttl + 5, message="old session gone")


def test_a_node_an_earlier_term_left_behind_is_removed_not_waited_behind(
    zk: ZkEnsemble, election: str
) -> None:
    """What an unconfirmed release can leave: a node of an ended term of ours, in a session
    the server still keeps. The next term deletes it instead of waiting for that session."""
    with unit_backend(zk, election, ttl=20.0) as backend, kazoo(zk) as other:
        backend.connect()
        first = backend.campaign(b"first", Flag())
        assert first is not None and isinstance(first, ZkTerm)
        assert backend.resign(first) is True
        leftover = other.create(
            f"{PREFIX}/{election}/{first.prefix}", b"first", ephemeral=True, sequence=True
        )

        cancel = Flag()
        timer = threading.Timer(10.0, cancel.set)
        timer.start()
        try:
            second = backend.campaign(b"second", cancel)
        finally:
            timer.cancel()
        assert second is not None, "waited behind a node of our own earlier term"
        assert isinstance(second, ZkTerm) and second.node is not None
        assert other.exists(leftover) is None
        assert queue_names(zk, election) == [second.node.rsplit("/", 1)[1]]
        assert backend.resign(second) is True


def test_campaign_during_an_outage_ends_promptly_when_cancelled(
    zk_private: ZkEnsemble, election: str
) -> None:
    """Defect 8: a campaign retried its store calls through an outage whatever `cancel`
    said. Now each call has a deadline and every wait and retry ends when `cancel` is set:
    against a frozen server (requests in flight) and a stopped one (connecting)."""
    member = zk_private.members[0]

    def cancelled_within(backend: ZooKeeperBackend) -> float:
        cancel = Flag()
        outcome: list[object] = []

        def run() -> None:
            try:
                outcome.append(backend.campaign(b"waiting", cancel))
            except Cancelled as exc:
                outcome.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(3.0)
        assert thread.is_alive(), f"campaign returned during the outage: {outcome}"
        cancel.set()
        asked = time.monotonic()
        thread.join(10.0)
        took = time.monotonic() - asked
        assert not thread.is_alive(), "campaign still running after cancel"
        assert outcome == [None] or isinstance(outcome[0], Cancelled), outcome
        return took

    with unit_backend(zk_private, election) as connected:
        connected.connect()
        member.freeze()
        try:
            took = cancelled_within(connected)
        finally:
            member.thaw()
        assert took < 3.0, f"frozen server: campaign returned {took:.1f}s after cancel"

    member.stop()
    with unit_backend(zk_private, election) as fresh:
        took = cancelled_within(fresh)
        assert took < 3.0, f"stopped server: campaign returned {took:.1f}s after cancel"


def test_node_names_keep_kazoos_layout_with_one_uuid_per_term(
    zk: ZkEnsemble, election: str
) -> None:
    """Each term has its own uuid prefix and its own session; the node is kazoo's layout."""
    with unit_backend(zk, election) as backend:
        backend.connect()
        terms = []
        for value in (b"one", b"two"):
            term = backend.campaign(value, Flag())
            assert isinstance(term, ZkTerm) and term.node is not None
            name = term.node.rsplit("/", 1)[1]
            assert NODE_NAME.fullmatch(name) and name.startswith(term.prefix)
            assert term.prefix.endswith(NODE_MARK)
            assert term.handle["session_id"] == term.session_id
            terms.append(term)
            assert backend.resign(term) is True and term.released
        assert terms[0].prefix != terms[1].prefix
        assert terms[0].session_id != terms[1].session_id
        assert terms[0].token < terms[1].token
