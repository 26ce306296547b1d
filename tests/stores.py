"""What the contract tests may ask of a store, the same way for etcd and for ZooKeeper.

The behaviour tests are written once and run on every backend, so they must not call etcdctl
or kazoo themselves. They read the queue of an election, delete its leader, and check that a
lease/session was released (not left to expire) through a `Store` probe, which does it with
the store's own tools: etcdctl for etcd, a separate kazoo client for ZooKeeper.
"""

from __future__ import annotations

import abc
import base64
import json
import logging
import re
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import NamedTuple

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from servers import ETCDCTL_BIN, EtcdCluster, EtcdMember, ZkEnsemble, ZkMember, _server_env

PREFIX = "/leaderrun"
ZK_CONTENDER = re.compile(r"__lock__(-?\d{10})$")
#: A server process of either kind: both have start/stop/kill/freeze/thaw/restart.
Member = EtcdMember | ZkMember

# The probe's own kazoo client must not fill the test output with reconnect warnings.
logging.getLogger("kazoo").setLevel(logging.ERROR)


class Queued(NamedTuple):
    """One candidate as the store holds it: fencing token, identity, key/node path."""

    token: int
    identity: str
    key: str


def step_down_value(token: int) -> bytes:
    """A step-down request as leaderrun writes it (SPEC §7), naming the term `token`."""
    return json.dumps({"v": 1, "token": token, "id": "test-operator", "asked": 0}).encode()


def identity_of(value: bytes) -> str:
    """The `id` of one of our values, else the raw value (a foreign candidate)."""
    try:
        document = json.loads(value)
    except ValueError:
        return value.decode(errors="replace")
    if isinstance(document, dict) and isinstance(document.get("id"), str):
        return document["id"]
    return value.decode(errors="replace")


class Store(abc.ABC):
    """A running store (server or cluster) and probes into it."""

    #: Fixture parameter and URL scheme: "etcd" or "zk".
    kind: str
    #: The product's name as leaderrun's messages write it ("cannot reach etcd ...").
    product: str

    @property
    @abc.abstractmethod
    def backend_url(self) -> str:
        """leaderrun's --backend URL for this store."""

    @property
    @abc.abstractmethod
    def members(self) -> Sequence[Member]:
        """The server processes (one, or three for a cluster), to freeze, restart or kill."""

    @abc.abstractmethod
    def leader_member(self) -> Member:
        """The member that leads the cluster (etcd raft leader, ZooKeeper quorum leader)."""

    @abc.abstractmethod
    def wait_healthy(self) -> None:
        """Wait until every live member serves again."""

    @abc.abstractmethod
    def candidates(self, election: str) -> list[Queued]:
        """The election's queue, leader first."""

    def queued(self, election: str, count: int) -> bool:
        """True once at least `count` candidates are in the queue (for `wait_for`)."""
        return len(self.candidates(election)) >= count

    @abc.abstractmethod
    def leader_handle(self, election: str) -> int:
        """The leader's lease id (etcd) or session id (ZooKeeper)."""

    @abc.abstractmethod
    def released(self, handle: int) -> bool:
        """True when the lease/session `handle` no longer exists on the server."""

    @abc.abstractmethod
    def delete_candidates(self, election: str) -> None:
        """Delete every candidate key/node of `election`, as an operator's tool would."""

    @abc.abstractmethod
    def write_elsewhere(self, name: str, value: str) -> None:
        """One unrelated write in the store (outside any election's queue)."""

    @abc.abstractmethod
    def foreign_candidate(self, election: str, value: bytes) -> AbstractContextManager[None]:
        """A candidate that some other program queued with `value`, for as long as the
        context lasts (etcd: a key under its own lease; ZooKeeper: a node of its own session,
        named as kazoo's recipe names them)."""

    @abc.abstractmethod
    def put_record(self, election: str, value: bytes) -> None:
        """Write `value` where the election's last-run record lives."""

    @abc.abstractmethod
    def write_step_down_request(self, election: str, token: int) -> None:
        """Write a step-down request naming `token`, as `leaderrun step-down` would."""

    @abc.abstractmethod
    def step_down_request(self, election: str) -> bytes | None:
        """The raw step-down request stored for `election`, or None."""

    @abc.abstractmethod
    def keys_under(self, prefix: str) -> list[str]:
        """Every key/node path at or under `prefix` (to prove nothing was written)."""


class EtcdStore(Store):
    kind = "etcd"
    product = "etcd"

    def __init__(self, cluster: EtcdCluster) -> None:
        self.cluster = cluster

    @property
    def backend_url(self) -> str:
        return self.cluster.backend_url

    @property
    def members(self) -> Sequence[Member]:
        return self.cluster.members

    def leader_member(self) -> Member:
        return self.cluster.raft_leader()

    def wait_healthy(self) -> None:
        self.cluster.wait_healthy()

    def candidates(self, election: str) -> list[Queued]:
        out = self.cluster.etcdctl("get", "--prefix", f"{PREFIX}/{election}/", "-w", "json")
        kvs = sorted(
            json.loads(out.stdout).get("kvs", []), key=lambda kv: int(kv["create_revision"])
        )
        return [
            Queued(
                int(kv["create_revision"]),
                identity_of(base64.b64decode(kv.get("value", ""))),
                base64.b64decode(kv["key"]).decode(),
            )
            for kv in kvs
        ]

    def _lease(self, election: str) -> int:
        out = self.cluster.etcdctl("get", "--prefix", f"{PREFIX}/{election}/", "-w", "json")
        kvs = sorted(
            json.loads(out.stdout).get("kvs", []), key=lambda kv: int(kv["create_revision"])
        )
        return int(kvs[0]["lease"])

    def leader_handle(self, election: str) -> int:
        return self._lease(election)

    def released(self, handle: int) -> bool:
        out = self.cluster.etcdctl("lease", "timetolive", f"{handle:x}").stdout
        return "already expired" in out

    def delete_candidates(self, election: str) -> None:
        self.cluster.etcdctl("del", "--prefix", f"{PREFIX}/{election}/")

    def write_elsewhere(self, name: str, value: str) -> None:
        self.cluster.etcdctl("put", f"{PREFIX}/{name}", value)

    def _put_bytes(self, key: str, value: bytes, *options: str) -> None:
        """etcdctl takes the value from stdin when it is not an argument: any bytes go."""
        env = {**_server_env(), "ETCDCTL_API": "3"}
        subprocess.run(
            [ETCDCTL_BIN, "--endpoints", self.cluster.endpoints, "put", *options, key],
            input=value, env=env, capture_output=True, check=True, timeout=30,
        )  # fmt: skip

    @contextmanager
    def foreign_candidate(self, election: str, value: bytes) -> Iterator[None]:
        lease = self.cluster.etcdctl("lease", "grant", "60").stdout.split()[1]
        self._put_bytes(f"{PREFIX}/{election}/{lease}", value, f"--lease={lease}")
        try:
            yield
        finally:
            self.cluster.etcdctl("lease", "revoke", lease)

    def put_record(self, election: str, value: bytes) -> None:
        self._put_bytes(f"{PREFIX}/{election}", value)

    def write_step_down_request(self, election: str, token: int) -> None:
        self._put_bytes(f"{PREFIX}/@step-down/{election}", step_down_value(token))

    def step_down_request(self, election: str) -> bytes | None:
        key = f"{PREFIX}/@step-down/{election}"
        out = self.cluster.etcdctl("get", key, "-w", "json").stdout
        kvs = json.loads(out).get("kvs") or []
        return base64.b64decode(kvs[0]["value"]) if kvs else None

    def keys_under(self, prefix: str) -> list[str]:
        out = self.cluster.etcdctl("get", "--prefix", prefix, "--keys-only").stdout
        return [line for line in out.splitlines() if line]


class ZkStore(Store):
    kind = "zk"
    product = "ZooKeeper"

    def __init__(self, ensemble: ZkEnsemble) -> None:
        self.ensemble = ensemble

    @property
    def backend_url(self) -> str:
        return self.ensemble.backend_url

    @property
    def members(self) -> Sequence[Member]:
        return self.ensemble.members

    def leader_member(self) -> Member:
        return self.ensemble.leader()

    def wait_healthy(self) -> None:
        self.ensemble.wait_healthy()

    @contextmanager
    def client(self) -> Iterator[KazooClient]:
        """A short-lived kazoo client: robust across the server restarts tests inject."""
        client = KazooClient(hosts=self.ensemble.endpoints, timeout=10.0)
        client.start(timeout=10)
        try:
            yield client
        finally:
            client.stop()
            client.close()

    def _nodes(self, client: KazooClient, election: str) -> list[tuple[str, bytes, int, int]]:
        """(path, data, czxid, ephemeral owner) of the election's candidates, in queue order;
        under `--max-holders` (kazoo's Semaphore layout) the lease nodes by czxid, then the
        lock queue `<election>-__lock__`."""
        path = f"{PREFIX}/{election}"
        try:
            children = client.get_children(path)
        except NoNodeError:
            return []
        leases = [(path, child) for child in children if not ZK_CONTENDER.search(child)]
        try:
            waiting = client.get_children(f"{path}-__lock__")
        except NoNodeError:
            waiting = []
        ordered = []
        for parent, names in ((path, children), (f"{path}-__lock__", waiting)):
            queue = [(int(m.group(1)), n) for n in names if (m := ZK_CONTENDER.search(n))]
            ordered += [(parent, child) for _, child in sorted(queue)]
        found: list[list[tuple[str, bytes, int, int]]] = [[], []]
        for index, nodes in enumerate((leases, ordered)):
            for parent, child in nodes:
                try:
                    data, stat = client.get(f"{parent}/{child}")
                except NoNodeError:
                    continue
                node = (f"{parent}/{child}", bytes(data), stat.czxid, stat.ephemeralOwner)
                found[index].append(node)
        return sorted(found[0], key=lambda node: node[2]) + found[1]

    def candidates(self, election: str) -> list[Queued]:
        with self.client() as client:
            return [
                Queued(czxid, identity_of(data), node)
                for node, data, czxid, _ in self._nodes(client, election)
            ]

    def leader_handle(self, election: str) -> int:
        with self.client() as client:
            return self._nodes(client, election)[0][3]

    def released(self, handle: int) -> bool:
        sessions = self.ensemble.leader().sessions()
        assert sessions is not None, "the ZooKeeper leader did not answer `dump`"
        return handle not in sessions

    def delete_candidates(self, election: str) -> None:
        with self.client() as client:
            for node, *_ in self._nodes(client, election):
                client.delete(node)

    def write_elsewhere(self, name: str, value: str) -> None:
        with self.client() as client:
            client.ensure_path(f"{PREFIX}/{name}")
            client.set(f"{PREFIX}/{name}", value.encode())

    @contextmanager
    def foreign_candidate(self, election: str, value: bytes) -> Iterator[None]:
        with self.client() as client:
            client.create(
                f"{PREFIX}/{election}/{uuid.uuid4().hex}__lock__",
                value,
                ephemeral=True,
                sequence=True,
                makepath=True,
            )
            yield  # leaving closes the session, and the node goes with it

    def put_record(self, election: str, value: bytes) -> None:
        with self.client() as client:
            client.ensure_path(f"{PREFIX}/{election}")
            client.set(f"{PREFIX}/{election}", value)

    def write_step_down_request(self, election: str, token: int) -> None:
        path = f"{PREFIX}/@step-down/{election}"
        with self.client() as client:
            client.ensure_path(path)
            client.set(path, step_down_value(token))

    def step_down_request(self, election: str) -> bytes | None:
        with self.client() as client:
            try:
                data, _ = client.get(f"{PREFIX}/@step-down/{election}")
            except NoNodeError:
                return None
        return bytes(data) or None

    def keys_under(self, prefix: str) -> list[str]:
        with self.client() as client:
            if client.exists(prefix) is None:
                return []
            found, stack = [prefix], [prefix]
            while stack:
                path = stack.pop()
                for child in client.get_children(path):
                    found.append(f"{path}/{child}")
                    stack.append(f"{path}/{child}")
            return found


def store_for(server: EtcdCluster | ZkEnsemble) -> Store:
    if isinstance(server, EtcdCluster):
        return EtcdStore(server)
    return ZkStore(server)
