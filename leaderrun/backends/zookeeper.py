"""ZooKeeper backend: kazoo's election layout, with our own timing of the session.

Store layout, as kazoo's `Election`/`Lock` recipe makes it (so `Election(...).contenders()`
lists our candidates): each candidate creates an ephemeral sequential node
`<chroot><prefix>/<election>/<uuid hex>__lock__<10-digit sequence>` whose data is its value;
the leader is the node with the lowest sequence, and its `czxid` is the fencing token. A waiter
watches only the node just ahead of it. The election's own node holds the last-run record.

The session is the lease. Why we do not simply trust kazoo's connection states (measured): it
fires SUSPENDED within milliseconds of losing the server but never LOST while the server is
away, and with its default retry policy it may reconnect only seconds after the server is back.
So this backend
- times the session itself: a renew thread makes one cheap request (`exists` on our own node)
  every `--renew-interval` and reports its *send* time as answered (the server cannot expire
  the session before it last heard from us plus the negotiated timeout); the supervisor stops
  the child from that, whatever kazoo's state;
- caps kazoo's reconnect backoff at about a second, so a member restart or an ensemble leader
  change shorter than the margin reconnects in time to keep the session (and the child);
- gives every request a short deadline, and when a member stops answering drops the connection
  so kazoo moves to another member (kazoo only notices a silent server through its own pings,
  which our requests suppress);
- treats LOST (session expired or closed) and the deletion of our node as lost leadership.

One session per candidacy, like etcd's one lease per candidacy: `resign` deletes our node and
closes the session; the next `connect` opens a new one.

With `--zk-auth-file` (digest `user:password`) the nodes we create get an ACL that lets only
that identity change them and everyone read them; a refusal by an ACL exits 77.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kazoo.client import KazooClient
from kazoo.exceptions import (
    AuthFailedError,
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NoAuthError,
    NoNodeError,
    OperationTimeoutError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.serialization import Connect
from kazoo.protocol.states import EventType, KazooState, WatchedEvent
from kazoo.retry import KazooRetry
from kazoo.security import ACL, make_acl, make_digest_acl

from leaderrun import metrics
from leaderrun.backends import Backend, Candidate, ElectionView, Leadership, LeaseClock
from leaderrun.errors import BackendRefused, BackendUnreachable, UsageError
from leaderrun.settings import Settings, Timing

log = logging.getLogger(__name__)

#: kazoo logs every reconnect at WARNING; the operator hears about connection trouble from our
#: own messages (and the supervisor's timing warnings), so kazoo's are shown at -vv only, as
#: debug detail (see `demote`).
kazoo_log = logging.getLogger("leaderrun.zookeeper.kazoo")

#: The node name kazoo's Lock (and so Election) recipe uses between the uuid and the sequence.
NODE_MARK = "__lock__"
CONTENDER = re.compile(rf"{NODE_MARK}(-?\d{{10}})$")
RETRY_INTERVAL = 0.25
#: Reconnect quickly: a member restart or leader change must be survived within the margin.
RECONNECT_DELAY = 0.1
RECONNECT_MAX_DELAY = 1.0
RECONNECT_JITTER = 0.2
REFUSALS: tuple[type[BaseException], ...] = (NoAuthError, AuthFailedError)
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (KazooException, KazooTimeoutError)


class Contender(NamedTuple):
    """One node of the queue: its name under the election node and its sequence number."""

    name: str
    sequence: int


@dataclass
class Session:
    """One ZooKeeper session and the clock of what the server has promised for it."""

    id: int
    clock: LeaseClock
    lost: threading.Event = field(default_factory=threading.Event)


def contenders(children: list[str]) -> list[Contender]:
    """The candidate nodes among `children`, in queue order (as kazoo's recipe orders them)."""
    found = []
    for child in children:
        match = CONTENDER.search(child)
        if match is not None:
            found.append(Contender(child, int(match.group(1))))
    return sorted(found, key=lambda c: c.sequence)


def hosts_of(settings: Settings) -> str:
    """kazoo's host string. The URL's path (the chroot) is applied by us, not by kazoo: kazoo
    requires a chroot node to exist already, and we create it along with the election node."""
    return ",".join(str(ep) for ep in settings.backend.endpoints)


def demote(record: logging.LogRecord) -> bool:
    """A logging filter: kazoo's records become debug records, whatever their level."""
    record.levelno, record.levelname = logging.DEBUG, "DEBUG"
    return True


kazoo_log.addFilter(demote)


def acl_for(settings: Settings) -> list[ACL] | None:
    """With `--zk-auth-file`, nodes we create can be changed only by that identity (the
    parent's ACL also decides who may add or delete candidates); everyone may read them, so
    `status` works without credentials. Without it, ZooKeeper's default (open) ACL."""
    if not settings.security.zk_auth:
        return None
    user, _, password = settings.security.zk_auth.partition(":")
    return [make_digest_acl(user, password, all=True), make_acl("world", "anyone", read=True)]


def make_client(settings: Settings, client_id: tuple[int, bytes] | None = None) -> KazooClient:
    retry = KazooRetry(
        max_tries=-1,
        delay=RECONNECT_DELAY,
        backoff=2,
        max_jitter=RECONNECT_JITTER,
        max_delay=RECONNECT_MAX_DELAY,
    )
    kazoo_log.setLevel(logging.DEBUG if settings.verbosity >= 2 else logging.CRITICAL + 1)
    zk_auth = settings.security.zk_auth
    return KazooClient(
        hosts=hosts_of(settings),
        timeout=settings.timing.ttl,
        client_id=client_id,
        auth_data=[("digest", zk_auth)] if zk_auth else None,
        default_acl=acl_for(settings),
        connection_retry=retry,
        # In the order given, not shuffled: after we drop a member that stopped answering,
        # kazoo goes on with the next one listed, while a reshuffle could put the hung member
        # first again and cost a whole connect timeout (T / number of members).
        randomize_hosts=False,
        # Our own calls have deadlines and retry loops; kazoo's recipes are not used.
        command_retry=KazooRetry(max_tries=3, delay=0.1, max_delay=RECONNECT_MAX_DELAY),
        logger=kazoo_log,
    )


def refusal_error(exc: BaseException) -> BackendRefused:
    if isinstance(exc, AuthFailedError):
        return BackendRefused("ZooKeeper refused the credentials; check --zk-auth-file")
    return BackendRefused(
        "ZooKeeper refused the request: the ACL of the election's nodes does not let this "
        "identity change them; check --zk-auth-file"
    )


class ZooKeeperBackend(Backend):
    """One ZooKeeper session at a time, holding at most one node in one election."""

    schemes = ("zk",)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.renew_interval = settings.timing.renew_interval
        self.rpc_timeout = max(0.5, min(2.0, self.renew_interval))
        #: `<chroot><prefix>`: where elections live; `root/<election>` is one election.
        self.root = settings.backend.path + settings.prefix
        self.election_node = f"{self.root}/{settings.election}"
        self.client: KazooClient | None = None
        self.session: Session | None = None
        self.leadership: Leadership | None = None
        #: Our node while we are in the queue (full path), else None.
        self.node: str | None = None
        #: The session timeout the server granted, in seconds (from the last Connect answer).
        self.negotiated: float | None = None
        self._connect_sent_at = 0.0
        self._renew_now = threading.Event()
        self._node_event = threading.Event()
        self._client_stop = threading.Event()
        self._renew_thread: threading.Thread | None = None
        self._suspended_at: float | None = None

    # -- the connection and the session -------------------------------------------------------

    def connect(self) -> None:
        if self.client is not None and self.session is not None and not self.session.lost.is_set():
            return
        self._stop_client()
        client = make_client(self.settings)
        self._record_negotiation(client)
        client.add_listener(self._on_state)
        self.client = client
        self._client_stop = threading.Event()
        try:
            client.start(timeout=self.settings.connect_timeout)
        except KazooTimeoutError:
            self.client = None
            raise BackendUnreachable(
                f"cannot reach ZooKeeper at {self.settings.backend} within "
                f"{self.settings.connect_timeout:g}s (no server answered); "
                "check --backend and that ZooKeeper is running"
            ) from None
        except REFUSALS as exc:
            self._stop_client()
            raise refusal_error(exc) from None
        if self.negotiated is None:  # pragma: no cover - guards against a kazoo change
            self._stop_client()
            raise RuntimeError("could not learn the session timeout ZooKeeper granted")
        if self.negotiated != self.settings.timing.ttl:
            log.info(
                "ZooKeeper granted a session timeout of %gs (asked %gs); the timing rule uses %gs",
                self.negotiated,
                self.settings.timing.ttl,
                self.negotiated,
            )
        # Renewing at a quarter of a TTL we did not get would make the child look at risk.
        self.renew_interval = min(self.settings.timing.renew_interval, self.negotiated / 4)
        self.rpc_timeout = max(0.5, min(2.0, self.renew_interval))
        self._renew_thread = threading.Thread(
            target=self._renew_loop,
            args=(client, self._client_stop),
            name="zk-renew",
            daemon=True,
        )
        self._renew_thread.start()

    def _record_negotiation(self, client: KazooClient) -> None:
        """Learn the session timeout the server granted, and when we asked for it.

        kazoo reads the granted timeout from the server's answer to Connect but keeps it to
        itself (it stores only the one we asked for), so we look at that answer on its way
        through the connection's `_invoke`. The send time of an answered Connect is also a
        renewal: a (re)connect touches the session on the server.
        """
        connection = client._connection
        invoke = connection._invoke

        def recording_invoke(timeout: float, request: Any, xid: int | None = None) -> Any:
            sent = time.monotonic()
            result = invoke(timeout, request, xid)
            if isinstance(request, Connect) and result[0].time_out > 0:
                self.negotiated = result[0].time_out / 1000.0
                self._connect_sent_at = sent
            return result

        connection._invoke = recording_invoke

    def _on_state(self, state: str) -> None:
        """kazoo's state listener: runs on its connection thread, so it must not block."""
        client = self.client
        if state == KazooState.CONNECTED and client is not None:
            client_id = client.client_id
            if client_id is None or self.negotiated is None:
                return
            session = self.session
            if session is None or session.id != client_id[0]:
                # A new session (the first, or kazoo's replacement of an expired one).
                session = Session(
                    id=client_id[0],
                    clock=LeaseClock(
                        ttl=self.negotiated,
                        last_ack=self._connect_sent_at,
                        election=self.settings.election,
                    ),
                )
                self.session = session
            else:
                session.clock.acked(self._connect_sent_at, self.negotiated)
            if self._suspended_at is not None:
                log.info(
                    "reconnected to ZooKeeper after %.2fs; session %x kept",
                    time.monotonic() - self._suspended_at,
                    session.id,
                )
                self._suspended_at = None
            self._renew_now.set()
        elif state == KazooState.SUSPENDED:
            self._suspended_at = time.monotonic()
            if self.node is not None:
                log.info(
                    "lost the connection to ZooKeeper (SUSPENDED); reconnecting, the session "
                    "lives on the server until its timeout"
                )
        elif state == KazooState.LOST:
            session = self.session
            if session is not None:
                session.lost.set()
            leadership = self.leadership
            if leadership is not None and not leadership.lost.is_set():
                leadership.lose("the ZooKeeper session expired or was closed")
            self._node_event.set()

    def _renew_loop(self, client: KazooClient, stop: threading.Event) -> None:
        """Make one request per renew interval and report its send time once answered.

        Nothing is sent while kazoo is reconnecting (requests would only queue up); the
        reconnection itself counts as a renewal (see `_on_state`), which also wakes this loop.
        """
        failing_since: float | None = None
        while not stop.is_set():
            self._renew_now.clear()
            session = self.session
            before = client.client_id
            if session is None or before is None or before[0] != session.id:
                if session is not None and failing_since is None:
                    failing_since = time.monotonic()
                self._renew_now.wait(self.renew_interval)
                continue
            node = self.node
            sent = time.monotonic()
            try:
                # Before we queue, any cheap read renews; the root of our elections needs no
                # permission beyond what `status` needs (it may not exist: that is an answer).
                stat = client.exists_async(
                    node or self.root, watch=self._on_node_event if node else None
                ).get(timeout=self.rpc_timeout)
            except TRANSIENT_ERRORS as exc:
                metrics.backend_error(self.settings.election)
                if failing_since is None:
                    failing_since = sent
                    log.debug("session request failed: %s", describe(exc))
                if isinstance(exc, KazooTimeoutError) and client.connected:
                    self._drop_connection(client)
                stop.wait(RETRY_INTERVAL)
                continue
            after = client.client_id
            if after is not None and after[0] == session.id and self.negotiated is not None:
                session.clock.acked(sent, self.negotiated)
                if failing_since is not None:
                    log.info("ZooKeeper answered again after %.1fs", sent - failing_since)
                    failing_since = None
            if node is not None and stat is None and node == self.node:
                self._node_gone(node)
            self._renew_now.wait(self.renew_interval)

    def _on_node_event(self, event: WatchedEvent) -> None:
        """The watch on our own node: deleted means lost; anything else (our own data change,
        a connection loss that drops every watch) means look again, which re-arms it."""
        if event.type == EventType.DELETED and event.path is not None:
            self._node_gone(event.path)
        else:
            self._renew_now.set()

    def _node_gone(self, node: str) -> None:
        if node != self.node:
            return
        leadership = self.leadership
        if leadership is not None and leadership.key == node:
            leadership.lose(f"our leader node {node} was deleted")
        self._node_event.set()

    @staticmethod
    def _drop_connection(client: KazooClient) -> None:
        """Make kazoo leave a member that stopped answering, keeping the session.

        kazoo notices a silent server only through its own pings, which it sends only when the
        connection is idle; our renewals keep it busy, so it would wait on a frozen member for
        ever. Shutting the socket down makes kazoo's connection loop read EOF and reconnect to
        the next member at once (the session lives on, on the server).
        """
        sock = getattr(getattr(client, "_connection", None), "_socket", None)
        if sock is not None:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _stop_client(self) -> None:
        """Close the session (its ephemeral node goes with it) and stop the renew thread."""
        client, self.client = self.client, None
        self._client_stop.set()
        self._renew_now.set()
        if client is not None:
            try:
                client.stop()
                client.close()
            except Exception as exc:  # kazoo raises if its writer does not stop in time
                log.debug("closing the ZooKeeper client: %s", describe(exc))
        if self._renew_thread is not None:
            self._renew_thread.join(timeout=self.rpc_timeout + 1)
            self._renew_thread = None
        self.session = None

    def close(self) -> None:
        """Drop the connection. For ZooKeeper that also ends the session (a graceful close),
        so it is called only once nothing is held or after `resign`."""
        self._stop_client()

    # -- the election -------------------------------------------------------------------------

    def campaign(self, value: bytes, cancel: threading.Event) -> Leadership | None:
        if self.client is None:
            self.connect()
        self._check_granted_timing()
        try:
            self._rpc(lambda c: c.ensure_path_async(self.election_node), cancel=cancel)
        except TRANSIENT_ERRORS:
            if cancel.is_set():
                return None
            raise
        while not cancel.is_set():
            session = self.session
            if session is None or session.lost.is_set():
                # kazoo is replacing an expired session; queue again in the new one.
                cancel.wait(RETRY_INTERVAL)
                continue
            prefix = uuid.uuid4().hex + NODE_MARK
            node = self._create_node(prefix, value, cancel)
            if node is None:
                break
            token = self._wait_until_first(node, prefix, session, cancel)
            if token is not None:
                leadership = Leadership(token=token, key=node, clock=session.clock)
                self.leadership = leadership
                if session.lost.is_set() or self.node != node:
                    leadership.lose("the ZooKeeper session was lost while being elected")
                self._renew_now.set()  # arm the watch on our node at once
                return leadership
            if not cancel.is_set():
                log.warning("our candidate node %s vanished while waiting; queueing again", node)
                self.node = None
        return None

    def _check_granted_timing(self) -> None:
        """Refuse to lead when the session timeout the server granted cannot keep the timing
        rule (its min/maxSessionTimeout, 2 and 20 ticks by default, bound what we asked)."""
        if self.negotiated is None:
            return
        timing = Timing(
            ttl=self.negotiated,
            kill_grace=self.settings.timing.kill_grace,
            renew_interval=self.renew_interval,
        )
        try:
            timing.check("granted session timeout")
        except UsageError:
            raise UsageError(
                f"ZooKeeper granted a session timeout of {self.negotiated:g}s (asked "
                f"{self.settings.timing.ttl:g}s), too short for renew interval "
                f"{timing.renew_interval:g}s + kill grace {timing.kill_grace:g}s + safety "
                f"{timing.safety:g}s; lower --kill-grace or raise maxSessionTimeout on the servers"
            ) from None

    def _create_node(self, prefix: str, value: bytes, cancel: threading.Event) -> str | None:
        """Create our ephemeral sequential node; its path, or None if cancelled first.

        A create may succeed on the server while its answer is lost; the uuid in the name (the
        trick kazoo's recipe uses) lets us find it again instead of queueing twice.
        """
        base = f"{self.election_node}/{prefix}"
        while not cancel.is_set():
            client = self._client()
            try:
                created = client.create_async(base, value, ephemeral=True, sequence=True).get(
                    timeout=self.rpc_timeout
                )
            except NoNodeError:  # someone removed the election node: make it again
                with suppress(*TRANSIENT_ERRORS):
                    self._rpc(lambda c: c.ensure_path_async(self.election_node), cancel=cancel)
                continue
            except TRANSIENT_ERRORS as exc:
                self._raise_if_refused(exc)
                found = self._find_own(prefix)
                if found is not None:
                    created = found
                else:
                    cancel.wait(RETRY_INTERVAL)
                    continue
            self.node = str(created)
            self._node_event.clear()
            return self.node
        return None

    def _find_own(self, prefix: str) -> str | None:
        with suppress(*TRANSIENT_ERRORS):
            children = (
                self._client().get_children_async(self.election_node).get(timeout=self.rpc_timeout)
            )
            for child in children:
                if child.startswith(prefix):
                    return f"{self.election_node}/{child}"
        return None

    def _wait_until_first(
        self, node: str, prefix: str, session: Session, cancel: threading.Event
    ) -> int | None:
        """Block until `node` is first in the queue; its czxid, or None if cancelled or our node
        vanished (the caller then queues again)."""
        ahead_seen: str | None = None
        name = node.rsplit("/", 1)[1]
        while not cancel.is_set():
            if session.lost.is_set() or self._node_event.is_set():
                return None
            client = self._client()
            try:
                queue_now = contenders(
                    client.get_children_async(self.election_node).get(timeout=self.rpc_timeout)
                )
            except TRANSIENT_ERRORS as exc:
                self._raise_if_refused(exc)
                cancel.wait(RETRY_INTERVAL)
                continue
            names = [c.name for c in queue_now]
            if name not in names:
                return None
            self._delete_duplicates(queue_now, prefix, name)
            ahead = [c for c in queue_now if c.sequence < queue_now[names.index(name)].sequence]
            if not ahead:
                try:
                    stat = client.exists_async(node).get(timeout=self.rpc_timeout)
                except TRANSIENT_ERRORS as exc:
                    self._raise_if_refused(exc)
                    cancel.wait(RETRY_INTERVAL)
                    continue
                return int(stat.czxid) if stat is not None else None
            wake = threading.Event()
            predecessor = f"{self.election_node}/{ahead[-1].name}"
            try:
                data, stat = client.get_async(predecessor, watch=wake_on(wake)).get(
                    timeout=self.rpc_timeout
                )
            except NoNodeError:
                continue  # gone already: look again
            except TRANSIENT_ERRORS as exc:
                self._raise_if_refused(exc)
                cancel.wait(RETRY_INTERVAL)
                continue
            if predecessor != ahead_seen:
                ahead_seen = predecessor
                self.on_waiting(Candidate(predecessor, int(stat.czxid), bytes(data)))
            while not (wake.is_set() or cancel.is_set() or self._node_event.is_set()):
                wake.wait(0.1)
        return None

    def _delete_duplicates(self, queue_now: list[Contender], prefix: str, mine: str) -> None:
        """A retried create whose first attempt did land after all leaves a second node of
        ours in the queue; it would wait behind us as a ghost candidate, so remove it."""
        for contender in queue_now:
            if contender.name.startswith(prefix) and contender.name != mine:
                log.debug("removing a duplicate candidate node %s", contender.name)
                with suppress(*TRANSIENT_ERRORS):
                    self._client().delete_async(f"{self.election_node}/{contender.name}")

    # -- leaving ------------------------------------------------------------------------------

    def resign(self) -> None:
        """Delete our node (the next candidate is woken at once), then close the session."""
        if self.leadership is not None:
            self.leadership.lose("resigned")
        node, self.node = self.node, None
        self.leadership = None
        client = self.client
        if node is not None and client is not None:
            try:
                self._rpc(lambda c: c.delete_async(node), attempts=4)
            except NoNodeError:
                pass
            except Exception as exc:
                log.warning(
                    "could not delete our candidate node %s (%s); it goes when the session "
                    "expires within %gs",
                    node,
                    describe(exc),
                    self.negotiated or self.settings.timing.ttl,
                )
                # Do not let a graceful close wait on a server that does not answer.
                self._drop_connection(client)
        self._stop_client()

    def release_handle(self) -> Mapping[str, Any] | None:
        client = self.client
        client_id = client.client_id if client is not None else None
        if client_id is None:
            return None
        session_id, password = client_id
        return {"session_id": int(session_id), "password": bytes(password).hex()}

    @classmethod
    def release_orphaned(cls, settings: Settings, handle: Mapping[str, Any]) -> None:
        """Take over the dead worker's session with its id and password, then close it: the
        server deletes its ephemeral node at once instead of after the session timeout."""
        client_id = (int(handle["session_id"]), bytes.fromhex(str(handle["password"])))
        client = make_client(settings, client_id=client_id)
        try:
            client.start(timeout=settings.connect_timeout)
        except KazooTimeoutError:
            raise BackendUnreachable(
                f"cannot reach ZooKeeper at {settings.backend} to close the session"
            ) from None
        finally:
            client.stop()
            client.close()

    def announce(self, leadership: Leadership, value: bytes) -> None:
        """Sent without waiting for the answer: it is cosmetic, and the supervisor calls it
        after starting the child but before it begins to watch the deadline, so it must not
        block on a server that does not answer."""
        client = self.client
        if client is not None and self.node == leadership.key and not leadership.lost.is_set():
            client.set_async(leadership.key, value)

    # -- last-run record ------------------------------------------------------------------------

    def last_run(self) -> bytes | None:
        try:
            data, _ = self._get(self.election_node)
        except NoNodeError:
            return None
        return data or None

    def record_run(self, leadership: Leadership, record: bytes) -> bool:
        """One multi-op: our node still exists (its path is unique to this candidacy, so that
        means we still lead) and the record is written, or nothing is."""

        def commit(client: KazooClient) -> Any:
            transaction = client.transaction()
            transaction.check(leadership.key, -1)
            transaction.set_data(self.election_node, record)
            return transaction.commit_async()

        results = self._rpc(commit)
        return not any(isinstance(result, Exception) for result in results)

    # -- observing and steering -----------------------------------------------------------------

    def elections(self) -> list[str]:
        try:
            names = self._children(self.root)
        except NoNodeError:
            return []
        found = []
        for name in sorted(names):
            try:
                children, stat = self._children(f"{self.root}/{name}", include_data=True)
            except NoNodeError:
                continue
            if contenders(children) or stat.dataLength > 0:
                found.append(name)
        return found

    def view(self, election: str) -> ElectionView:
        path = f"{self.root}/{election}"
        try:
            record, _ = self._get(path)
            children = self._children(path)
        except NoNodeError:
            return ElectionView(election, ())
        candidates = []
        for contender in contenders(children):
            key = f"{path}/{contender.name}"
            try:
                data, stat = self._get(key)
            except NoNodeError:
                continue  # left while we looked
            candidates.append(Candidate(key, int(stat.czxid), bytes(data)))
        return ElectionView(election, tuple(candidates), bytes(record) if record else None)

    def step_down(self, election: str) -> Candidate | None:
        leader = self.view(election).leader
        if leader is None:
            return None
        with suppress(NoNodeError):
            self._rpc(lambda c: c.delete_async(leader.key))
        return leader

    # -- helpers ------------------------------------------------------------------------------

    def _get(self, path: str) -> tuple[bytes, Any]:
        """Data and stat of `path` (NoNodeError when it does not exist)."""
        data, stat = self._rpc(lambda c: c.get_async(path))
        return bytes(data or b""), stat

    def _children(self, path: str, include_data: bool = False) -> Any:
        """Children of `path`, with its stat when `include_data` (as kazoo returns them)."""
        return self._rpc(lambda c: c.get_children_async(path, include_data=include_data))

    def _client(self) -> KazooClient:
        client = self.client
        if client is None:
            raise ConnectionClosedError("the ZooKeeper connection is closed")
        return client

    def _rpc(
        self,
        call: Callable[[KazooClient], Any],
        attempts: int | None = None,
        cancel: threading.Event | None = None,
    ) -> Any:
        """One request with a deadline, retried through a blip. Refusals are final (exit 77);
        answers the server gave (no node, bad version, ...) are raised as they are."""
        tries = 0
        while True:
            try:
                return call(self._client()).get(timeout=self.rpc_timeout)
            except TRANSIENT_ERRORS as exc:
                self._raise_if_refused(exc)
                if not is_transient(exc):
                    raise
                tries += 1
                if attempts is not None and tries >= attempts:
                    raise
                if cancel is not None and cancel.is_set():
                    raise
                if tries == 8:
                    log.warning("ZooKeeper is not answering (%s); still trying", describe(exc))
                time.sleep(RETRY_INTERVAL)

    @staticmethod
    def _raise_if_refused(exc: BaseException) -> None:
        if isinstance(exc, REFUSALS):
            raise refusal_error(exc) from None


def wake_on(event: threading.Event) -> Callable[[WatchedEvent], None]:
    """A watch callback that sets `event` on any notification (kazoo runs it on its thread)."""
    return lambda watched: event.set()


def is_transient(exc: BaseException) -> bool:
    """Connection trouble (worth retrying) as opposed to an answer from the server. An expired
    session is transient too: kazoo opens a new one by itself. A client we closed is not."""
    if isinstance(exc, ConnectionClosedError):
        return False
    return isinstance(
        exc, KazooTimeoutError | ConnectionLoss | OperationTimeoutError | SessionExpiredError
    )


def describe(exc: BaseException | None) -> str:
    """A short, secret-free description of a client error for one-line messages."""
    if exc is None:
        return "no answer"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


__all__ = ["NODE_MARK", "ZooKeeperBackend", "contenders"]
