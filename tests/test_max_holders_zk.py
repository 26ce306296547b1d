"""`--max-holders N` on ZooKeeper: kazoo's `Semaphore` recipe layout, both ways. kazoo's own
semaphore users see our holders and queue with them, our record on the semaphore node does
not upset kazoo's N check, and a candidate with another N (an N = 1 one included) exits 2
without creating a node. The behaviour shared with etcd is in test_max_holders.py."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from helpers import ProcessRegistry, TrackedPopen, wait_for
from kazoo.recipe.lock import Semaphore
from runs import operator, start, status, wait_exit
from servers import ZkEnsemble
from stores import PREFIX, ZkStore
from test_max_holders import Jobs, holders
from test_zk_specific import unit_settings

from leaderrun.backends import Flag
from leaderrun.backends.zookeeper import NODE_MARK, ZooKeeperBackend
from leaderrun.errors import UsageError
from leaderrun.record import candidate_value


@pytest.fixture
def store(zk: ZkEnsemble) -> ZkStore:
    return ZkStore(zk)


@contextmanager
def semaphore(store: ZkStore, election: str) -> Iterator[Semaphore]:
    """kazoo's own Semaphore on the election, N = 2, in a session of its own."""
    with store.client() as client:
        yield Semaphore(client, f"{PREFIX}/{election}", "kazoo-user", max_leases=2)


def ids_and_slots(values: list[str]) -> dict[str, int | None]:
    documents = [json.loads(value) for value in values]
    return {document["id"]: document.get("slot") for document in documents}


def nodes_of(store: ZkStore, election: str) -> list[str]:
    """Every node the election has anywhere under the prefix (its queue, leases, lock
    queue, step-down requests)."""
    return sorted(key for key in store.keys_under(PREFIX) if election in key)


def test_kazoo_semaphore_sees_our_holders_and_queues_with_them(
    store: ZkStore, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    jobs = Jobs(tmp_path)
    procs = holders(store, processes, election, jobs, 2, 2)
    first = jobs.wait_runs(2)
    with semaphore(store, election) as sem:
        assert ids_and_slots(sem.lease_holders()) == {"c0": 0, "c1": 1}
        assert not sem.acquire(blocking=False), "kazoo took a third lease of two"

        # A holder leaves: kazoo's semaphore takes the freed lease, and our next candidate
        # waits behind both.
        _, slot, token = first[0]
        jobs.finish(token)
        assert sem.acquire(timeout=30)
        late = start(processes, store, election, *jobs.command(),
                     opts=("--max-holders", "2", "--id", "c2"))  # fmt: skip
        wait_for(lambda: store.queued(election, 3), 30, message="c2 queued behind kazoo")
        assert len(jobs.runs()) == 2, "c2 ran while kazoo and c1 held both leases"
        assert "kazoo-user" in sem.lease_holders()
        _, document = status(store)  # every election (others' without a leader: exit 3)
        names = [shown["name"] for shown in document["elections"]]
        assert election in names and f"{election}-__lock__" not in names

        sem.release()
        _, third_slot, third_token = jobs.wait_runs(3)[2]
        assert third_slot == slot, "c2 takes the slot no lease has"
        assert third_token > max(t for _, _, t in first)
    jobs.finish()
    assert [wait_exit(p) for p in (*procs, late)] == [0, 0, 0]
    assert jobs.violations() == []


def test_once_per_record_on_the_semaphore_node_leaves_kazoo_n_check_alone(
    store: ZkStore, election: str, processes: ProcessRegistry
) -> None:
    opts = ("--max-holders", "2", "--once-per", "1h", "--skip-exit-code", "3")
    assert wait_exit(start(processes, store, election, "true", opts=opts)) == 0
    with store.client() as client:
        record, _ = client.get(f"{PREFIX}/{election}")
    assert json.loads(record), "the holder wrote the record (guarded by its lease node)"
    assert wait_exit(start(processes, store, election, "true", opts=opts)) == 3  # skipped
    with semaphore(store, election) as sem:
        assert sem.acquire(timeout=30), "kazoo refused our JSON record as its N"
        assert sem.lease_holders() == ["kazoo-user"]
        sem.release()


@pytest.mark.parametrize(("ours", "theirs"), [("1", "2"), ("2", "1")])
def test_an_n1_and_an_n2_candidate_refuse_each_others_election_and_create_nothing(
    store: ZkStore,
    election: str,
    processes: ProcessRegistry,
    tmp_path: Path,
    ours: str,
    theirs: str,
) -> None:
    jobs = Jobs(tmp_path)
    holder = start(processes, store, election, *jobs.command(),
                   opts=("--max-holders", theirs, "--id", "holder"))  # fmt: skip
    jobs.wait_runs(1)
    before = nodes_of(store, election)
    odd = start(processes, store, election, *jobs.command(),
                opts=("--max-holders", ours), name="odd", verbose=0)  # fmt: skip
    assert wait_exit(odd) == 2
    message = odd.read_stderr().strip()
    assert f"--max-holders {ours} does not match" in message
    assert f"--max-holders {theirs}" in message and "holder" in message
    assert len(message.splitlines()) == 1
    assert nodes_of(store, election) == before
    assert len(jobs.runs()) == 1
    jobs.finish()
    assert wait_exit(holder) == 0


def test_force_step_down_of_a_slot_deletes_only_that_lease(
    store: ZkStore, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    jobs = Jobs(tmp_path)
    procs = holders(store, processes, election, jobs, 3, 2)
    first = {slot: (pid, token) for pid, slot, token in jobs.wait_runs(2)}
    leases = {q.token: q.key for q in store.candidates(election)[:2]}
    assert set(leases) == {token for _, token in first.values()}, "tokens are the leases' czxids"
    assert all(key.startswith(f"{PREFIX}/{election}/") for key in leases.values())
    done = operator(store, "step-down", "--force", "--slot", "1", election)
    assert done.returncode == 0, done.stderr
    third = jobs.wait_runs(3)[2]
    assert third[1] == 1
    assert leases[first[1][1]] not in [q.key for q in store.candidates(election)]
    assert leases[first[0][1]] in [q.key for q in store.candidates(election)]
    jobs.finish()
    assert sorted(wait_exit(p) for p in procs) == [0, 0, 75]
    assert jobs.violations() == []


def test_an_n1_and_an_n2_candidate_starting_together_never_both_run(
    store: ZkStore, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """Both pass the check before anything exists; then the N = 2 lock holder checks the
    election node again after taking its lease, and the N = 1 candidate checks the leases once
    first, so at most one of them runs (the other, or both, exit 2)."""
    for round_ in range(4):
        (tmp_path / f"round-{round_}").mkdir()
        jobs = Jobs(tmp_path / f"round-{round_}")
        name = f"{election}-{round_}"
        pair = [
            start(processes, store, name, *jobs.command(),
                  opts=("--max-holders", n, "--id", f"n{n}"), name=f"n{n}-{round_}", verbose=0)
            for n in ("1", "2")
        ]  # fmt: skip

        def settled(pair: list[TrackedPopen] = pair, jobs: Jobs = jobs) -> bool:
            codes = [p.poll() for p in pair]
            return 2 in codes and (None not in codes or len(jobs.runs()) >= 1)

        wait_for(settled, 30, message="one refused, the other running or refused")
        assert len(jobs.runs()) <= 1
        jobs.finish()
        assert sorted(wait_exit(p) for p in pair) in ([0, 2], [2, 2])
        assert jobs.violations() == []


def test_an_n1_candidate_queued_while_we_take_a_lease_is_seen_before_we_hold(
    zk: ZkEnsemble, store: ZkStore, election: str
) -> None:
    """The race the test above tries by chance, made certain: an N = 1 candidate queues in
    the election node after the lock's first read the leases, before its transaction. The
    N = 2 candidate sees it once its lease exists, and withdraws (its lease goes with its
    session) instead of holding alongside."""
    settings = replace(unit_settings(zk, election, 10.0), max_holders=2)
    backend = ZooKeeperBackend(settings)
    path = f"{PREFIX}/{election}"
    with store.client() as probe:
        commit = backend._commit_lease

        def n1_first(*args: Any) -> bool | None:
            probe.create(f"{path}/{uuid.uuid4().hex}{NODE_MARK}", candidate_value("n1", "true"),
                         ephemeral=True, sequence=True)  # fmt: skip
            return commit(*args)

        backend._commit_lease = n1_first  # type: ignore[method-assign]
        try:
            with pytest.raises(UsageError, match="--max-holders 2 does not match"):
                backend.campaign(candidate_value("unit", "true", holders=2), Flag())
        finally:
            backend.close()
        children = probe.get_children(path)
        assert [c for c in children if NODE_MARK not in c] == [], "our lease was left behind"
