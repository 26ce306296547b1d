"""ZooKeeper backend: kazoo's election layout, with our own timing of the session.

Store layout, as kazoo's `Election`/`Lock` recipe makes it (so `Election(...).contenders()`
lists our candidates): each candidate creates an ephemeral sequential node
`<chroot><prefix>/<election>/<uuid hex>__lock__<10-digit sequence>` whose data is its value;
the leader is the node with the lowest sequence, and its `czxid` is the fencing token. A waiter
watches only the node just ahead of it. The election's own node holds the last-run record.

The session is the lease, so every candidacy is one `ZkTerm` with a session of its own (a
kazoo client of its own, a `Connection`), like etcd's one lease per candidacy, and one uuid
prefix of its own for its node. Nothing of a term lives on the backend object. A term ends for
good when its session does: if kazoo reports the session expired, or reconnects in another
session, the term is lost, even while it only waits (its node died with the old session, or a
retried create put one in the new session); the campaign then closes that client, which removes
whatever node of ours the new session holds, and queues again as a new term in a new session.
So a node of an ended term can never stand ahead of us in a session of ours that lives on.

Why we do not simply trust kazoo's connection states (measured): it fires SUSPENDED within
milliseconds of losing the server but never LOST while the server is away, and with its default
retry policy it may reconnect only seconds after the server is back. So this backend
- times the session itself: a renew thread per term makes one cheap request (`exists` on our
  own node) every `--renew-interval` and reports its *send* time as answered (the server cannot
  expire the session before it last heard from us plus the negotiated timeout); the supervisor
  stops the child from that, whatever kazoo's state;
- caps kazoo's reconnect backoff at about a second, so a member restart or an ensemble leader
  change shorter than the margin reconnects in time to keep the session (and the child);
- gives every request a deadline, and when a member stops answering drops the connection so
  kazoo moves to another member (kazoo only notices a silent server through its own pings,
  which our requests suppress);
- never sleeps to poll: waits are on the predecessor's watch, the term's `lost`, the campaign's
  `cancel` or `close()`, and retries are paced by a cancellable wait;
- treats LOST (session expired or closed), a new session id and the deletion of our node as
  the end of the term.

`resign` deletes our node (the next candidate is woken at once) and closes the session; it
reports the release only once the server confirmed one of them.

`step-down` writes its request in a node outside the queue (`step_down_path`, so kazoo's
contenders never see it), which the leader watches from its election on.

With `--zk-auth-file` (digest `user:password`) the nodes we create get an ACL that lets only
that identity change them and everyone read them; a refusal by an ACL exits 77. The leader then
also makes its election's step-down request node its own, and honours a request only in a node
nobody else may write.
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
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NoAuthError,
    NoNodeError,
    OperationTimeoutError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.serialization import Close, Connect
from kazoo.protocol.states import EventType, KazooState, KeeperState, WatchedEvent
from kazoo.retry import KazooRetry
from kazoo.security import ACL, OPEN_ACL_UNSAFE, Permissions, make_acl, make_digest_acl

from leaderrun import metrics
from leaderrun.backends import (
    Backend,
    Cancelled,
    Candidate,
    ElectionView,
    Flag,
    LeaseClock,
    Term,
    step_down_path,
    woken_by,
)
from leaderrun.errors import BackendRefused, BackendUnreachable, UsageError
from leaderrun.record import describe_requester, requested_token
from leaderrun.settings import ELECTION_NAME, Settings, Timing

log = logging.getLogger(__name__)

#: kazoo logs every reconnect at WARNING; the operator hears about connection trouble from our
#: own messages (and the supervisor's timing warnings), so kazoo's are shown at -vv only, as
#: debug detail (see `demote`).
kazoo_log = logging.getLogger("leaderrun.zookeeper.kazoo")

#: The node name kazoo's Lock (and so Election) recipe uses between the uuid and the sequence.
NODE_MARK = "__lock__"
CONTENDER = re.compile(rf"{NODE_MARK}(-?\d{{10}})$")
#: Pause between attempts of a failed request (a cancellable wait, never a poll).
RETRY_INTERVAL = 0.25
#: Reconnect quickly: a member restart or leader change must be survived within the margin.
RECONNECT_DELAY = 0.1
RECONNECT_MAX_DELAY = 1.0
RECONNECT_JITTER = 0.2
#: How long a withdrawn candidacy (cancelled, or its session gone) may spend closing its
#: session: the supervisor expects `campaign` back within a request's timeout of a cancel.
WITHDRAW_TIMEOUT = 1.0
REFUSALS: tuple[type[BaseException], ...] = (NoAuthError, AuthFailedError)
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (KazooException, KazooTimeoutError)


class Contender(NamedTuple):
    """One node of the queue: its name under the election node and its sequence number."""

    name: str
    sequence: int


def contenders(children: list[str]) -> list[Contender]:
    """The candidate nodes among `children`, in queue order (as kazoo's recipe orders them)."""
    found = []
    for child in children:
        match = CONTENDER.search(child)
        if match is not None:
            found.append(Contender(child, int(match.group(1))))
    return sorted(found, key=lambda c: c.sequence)


def prefix_of(name: str) -> str:
    """`<uuid hex>__lock__`: the part of a node's name that is one candidacy's own."""
    return name.split(NODE_MARK, 1)[0] + NODE_MARK


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


class AnsweredClose(Close):  # type: ignore[misc]
    """ZooKeeper's CloseSession request, with an answer we can wait for.

    kazoo's `stop()` sends Close without a result object and then stops the connection
    whether or not the server answered, so a session the server closed (its ephemeral nodes
    gone) looks the same as one merely abandoned (its nodes stay until it expires). kazoo still
    treats this as its Close (it is one): the connection ends once the answer is read.
    """

    __slots__ = ()

    def __bool__(self) -> bool:
        return True  # an empty tuple otherwise, and kazoo sets no result for a false request

    @classmethod
    def deserialize(cls, data: bytes, offset: int) -> bool:
        return True


class Connection:
    """One kazoo client, so one ZooKeeper session at a time. Each term takes one that no term
    used before (`term`), and closes it when it ends; kazoo may replace an expired session
    inside it, which ends the term (see `ZooKeeperBackend._on_state`)."""

    def __init__(self, client: KazooClient) -> None:
        self.client = client
        #: Guards `session_id` and `term` between kazoo's connection thread and ours.
        self.lock = threading.Lock()
        #: The session the client holds now (None while it has none).
        self.session_id: int | None = None
        #: The term whose session this is, once one took it.
        self.term: ZkTerm | None = None
        #: The session timeout the server granted, in seconds (from the last Connect answer),
        #: and when that Connect was sent (an answered Connect is a renewal too).
        self.negotiated: float | None = None
        self.connect_sent_at = 0.0
        self.suspended_at: float | None = None
        #: Set on every state change (connected, suspended, lost): what waits for a
        #: (re)connection waits on.
        self.changed = threading.Event()
        self.stopped = False

    def ready(self) -> bool:
        """Connected, in the session our listener saw established (so `session_id` is it)."""
        client_id = self.client.client_id
        return not self.stopped and client_id is not None and client_id[0] == self.session_id


@dataclass(eq=False)
class ZkTerm(Term):
    """A term on ZooKeeper: its session (`conn`, `session_id`) is its life, its node is
    `<election>/<prefix><sequence>` with a `prefix` of its own."""

    conn: Connection | None = field(default=None, repr=False)
    session_id: int = 0
    prefix: str = ""
    #: Our node's full path, once created (or found again by `prefix`).
    node: str | None = None
    renew_interval: float = 1.0
    #: Wakes the renew thread at once (reconnected, our node changed, elected).
    renew_now: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def client(self) -> KazooClient:
        assert self.conn is not None
        return self.conn.client


class ZooKeeperBackend(Backend):
    """Read paths share one connection; each candidacy is a `ZkTerm` with a session of its own."""

    schemes = ("zk",)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.rpc_timeout = max(0.5, min(2.0, settings.timing.renew_interval))
        #: `<chroot><prefix>`: where elections live; `root/<election>` is one election.
        self.root = settings.backend.path + settings.prefix
        self.election_node = f"{self.root}/{settings.election}"
        #: The connection `connect` opened: `status`, `step-down` and the last-run record use
        #: it, and the next term takes it if no term has used it yet.
        self.conn: Connection | None = None
        self.closed = Flag()
        self._lock = threading.Lock()
        #: Connections not stopped yet (for `close`).
        self._open: list[Connection] = []
        #: Prefixes of our ended terms, until their sessions have surely expired: a node of
        #: theirs still there (the close was not answered, or the session had changed) is
        #: deleted when a later term finds it in the queue, never waited behind.
        self._leftovers: dict[str, float] = {}

    # -- the request layer --------------------------------------------------------------------

    def _ends(self, *flags: Flag) -> tuple[Flag, ...]:
        """`flags` and `closed`, each once (a flag linked twice to one event would unlink it
        on the inner exit)."""
        unique: dict[int, Flag] = {id(flag): flag for flag in (*flags, self.closed)}
        return tuple(unique.values())

    def _sleep(self, seconds: float, *flags: Flag) -> bool:
        """A pause that any of `flags` (or `close`) ends at once; True when one was set."""
        ends = self._ends(*flags)
        woken = threading.Event()
        with woken_by(woken, *ends):
            woken.wait(max(0.0, seconds))
        return any(flag.is_set() for flag in ends)

    @staticmethod
    def _wait_result(result: Any, timeout: float, *ends: Flag) -> Any:
        """The answer of one kazoo request within `timeout`; Cancelled as soon as one of
        `ends` is set first, KazooTimeoutError when the server did not answer in time."""
        if not result.ready():
            done = threading.Event()

            def wake(_: Any) -> None:
                done.set()

            result.rawlink(wake)
            try:
                with woken_by(done, *ends):
                    done.wait(max(0.0, timeout))
            finally:
                result.unlink(wake)
        if result.ready():
            return result.get(block=False)
        if any(flag.is_set() for flag in ends):
            raise Cancelled()
        raise KazooTimeoutError(f"no answer within {timeout:.1f}s")

    def _rpc(
        self,
        client: KazooClient,
        call: Callable[[KazooClient], Any],
        *,
        ends: tuple[Flag, ...] = (),
        until: float | None = None,
        attempts: int | None = None,
    ) -> Any:
        """One request, retried through a blip. Each attempt is bounded by the RPC timeout and
        `until` (monotonic); any of `ends` (or `close`) ends it at once with Cancelled.

        Refusals are final (BackendRefused, exit 77); running out of time or attempts raises
        BackendUnreachable. Answers the server gave (no node, ...) are raised as they are.
        """
        flags = self._ends(*ends)
        tries = 0
        while True:
            if any(flag.is_set() for flag in flags):
                raise Cancelled()
            budget = self.rpc_timeout if until is None else until - time.monotonic()
            try:
                return self._wait_result(call(client), min(self.rpc_timeout, budget), *flags)
            except TRANSIENT_ERRORS as exc:
                self._raise_if_refused(exc)
                if isinstance(exc, ConnectionClosedError):
                    raise BackendUnreachable("the connection to ZooKeeper is closed") from exc
                if not is_transient(exc):
                    raise
                metrics.backend_error(self.settings.election)
                if isinstance(exc, KazooTimeoutError) and client.connected:
                    self._drop_connection(client)
                tries += 1
                left = None if until is None else until - time.monotonic()
                if (left is not None and left <= 0) or (attempts is not None and tries >= attempts):
                    raise BackendUnreachable(f"ZooKeeper did not answer ({describe(exc)})") from exc
                if tries == 8:
                    log.warning("ZooKeeper is not answering (%s); still trying", describe(exc))
                pause = RETRY_INTERVAL if left is None else min(RETRY_INTERVAL, left)
                if self._sleep(pause, *flags):
                    raise Cancelled() from None

    @staticmethod
    def _raise_if_refused(exc: BaseException) -> None:
        if isinstance(exc, REFUSALS):
            raise refusal_error(exc) from None

    # -- connections and sessions -------------------------------------------------------------

    def connect(self, cancel: Flag | None = None) -> None:
        """Open a connection (a new session) unless the current one is live and no term has
        used it: after a term, the next campaign always gets a session of its own."""
        conn = self.conn
        if conn is not None and conn.term is None and conn.ready():
            return
        self.conn = self._open_connection(cancel)
        if conn is not None and conn.term is None:
            self._discard(conn)

    def _open_connection(self, cancel: Flag | None) -> Connection:
        ends = self._ends(*((cancel,) if cancel is not None else ()))
        if any(flag.is_set() for flag in ends):
            raise Cancelled()
        conn = Connection(make_client(self.settings))
        self._record_negotiation(conn)
        conn.client.add_listener(lambda state: self._on_state(conn, state))
        with self._lock:
            self._open.append(conn)
        give_up_at = time.monotonic() + self.settings.connect_timeout
        try:
            conn.client.start_async()
            while not conn.ready() and conn.client.client_state != KeeperState.AUTH_FAILED:
                conn.changed.clear()
                if conn.ready() or any(flag.is_set() for flag in ends):
                    break
                left = give_up_at - time.monotonic()
                if left <= 0:
                    break
                with woken_by(conn.changed, *ends):
                    conn.changed.wait(left)
        except BaseException:
            self._discard(conn)
            raise
        if conn.ready() and conn.negotiated is not None:
            self._adopt_timing(conn)
            return conn
        refused = conn.client.client_state == KeeperState.AUTH_FAILED
        self._discard(conn)
        if refused:
            raise refusal_error(AuthFailedError())
        if any(flag.is_set() for flag in ends):
            raise Cancelled()
        raise BackendUnreachable(
            f"cannot reach ZooKeeper at {self.settings.backend} within "
            f"{self.settings.connect_timeout:g}s (no server answered); "
            "check --backend and that ZooKeeper is running"
        )

    def _adopt_timing(self, conn: Connection) -> None:
        assert conn.negotiated is not None
        if conn.negotiated != self.settings.timing.ttl:
            log.info(
                "ZooKeeper granted a session timeout of %gs (asked %gs); the timing rule uses %gs",
                conn.negotiated,
                self.settings.timing.ttl,
                conn.negotiated,
            )
        self.rpc_timeout = max(0.5, min(2.0, self._renew_interval(conn)))

    def _renew_interval(self, conn: Connection) -> float:
        """Renewing at a quarter of a TTL we did not get would make the child look at risk."""
        negotiated = conn.negotiated or self.settings.timing.ttl
        return min(self.settings.timing.renew_interval, negotiated / 4)

    @staticmethod
    def _record_negotiation(conn: Connection) -> None:
        """Learn the session timeout the server granted, and when we asked for it.

        kazoo reads the granted timeout from the server's answer to Connect but keeps it to
        itself (it stores only the one we asked for), so we look at that answer on its way
        through the connection's `_invoke`. The send time of an answered Connect is also a
        renewal: a (re)connect touches the session on the server.
        """
        connection = conn.client._connection
        invoke = connection._invoke

        def recording_invoke(timeout: float, request: Any, xid: int | None = None) -> Any:
            sent = time.monotonic()
            result = invoke(timeout, request, xid)
            if isinstance(request, Connect) and result[0].time_out > 0:
                conn.negotiated = result[0].time_out / 1000.0
                conn.connect_sent_at = sent
            return result

        connection._invoke = recording_invoke

    def _on_state(self, conn: Connection, state: str) -> None:
        """kazoo's state listener: runs on its connection thread, so it must not block.

        A reconnection in the same session is a renewal of the term holding it; one in another
        session (kazoo replaces an expired session by itself) ends that term for good, as does
        LOST: its node died with the old session, and a node a retried create may have put in
        the new one is not the term's.
        """
        client = conn.client
        now = time.monotonic()
        lost: str | None = None
        acked = False
        session_id: int | None = None
        previous: int | None = None
        with conn.lock:
            term = conn.term
            if state == KazooState.CONNECTED:
                client_id = client.client_id
                if client_id is not None:
                    session_id = client_id[0]
                    previous, conn.session_id = conn.session_id, session_id
                    if term is not None and session_id != term.session_id:
                        lost = (
                            f"the ZooKeeper session {term.session_id:x} expired (kazoo "
                            f"reconnected in a new session {session_id:x})"
                        )
                    acked = term is not None and lost is None and not term.lost.is_set()
            elif state == KazooState.LOST:
                conn.session_id = None
                if term is not None:
                    lost = "the ZooKeeper session expired or was closed"
        if state == KazooState.CONNECTED and session_id is not None:
            if conn.suspended_at is not None:
                took, conn.suspended_at = now - conn.suspended_at, None
                if previous == session_id:
                    log.info(
                        "reconnected to ZooKeeper after %.2fs; session %x kept", took, session_id
                    )
                else:
                    log.info(
                        "reconnected to ZooKeeper after %.2fs in a new session %x; the old "
                        "session is gone",
                        took,
                        session_id,
                    )
            if acked and term is not None and conn.negotiated is not None:
                term.clock.acked(conn.connect_sent_at, conn.negotiated)
        elif state == KazooState.SUSPENDED:
            conn.suspended_at = now
            if term is not None and term.node is not None and not term.lost.is_set():
                log.info(
                    "lost the connection to ZooKeeper (SUSPENDED); reconnecting, the session "
                    "lives on the server until its timeout"
                )
        if term is not None:
            if lost is not None:
                term.lose(lost)
            term.renew_now.set()
        conn.changed.set()

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

    def _close_session(self, conn: Connection, until: float) -> bool:
        """Close the connection's session; True only once the server answered the close (it
        then deleted every ephemeral node of the session and woke their watchers).

        Waits for a reconnection (and leaves a hung member) until `until`; whatever the answer,
        the client is stopped afterwards, off this thread, so this never blocks on kazoo.
        """
        client = conn.client
        answered = False
        try:
            while not answered and not conn.stopped:
                left = until - time.monotonic()
                if left <= 0:
                    break
                if not client.connected:
                    if client.client_state in (KeeperState.CLOSED, KeeperState.AUTH_FAILED):
                        break  # no session left to close
                    conn.changed.clear()
                    if not client.connected:
                        conn.changed.wait(left)
                    continue
                result = client.handler.async_result()
                client._call(AnsweredClose(), result)
                try:
                    self._wait_result(result, min(self.rpc_timeout, left))
                    answered = True
                except KazooTimeoutError:
                    if client.connected:
                        self._drop_connection(client)
                except ConnectionClosedError:
                    break
                except TRANSIENT_ERRORS:
                    continue  # connection lost, or the session expired: close what is there
        finally:
            self._discard(conn)
        return answered

    def _discard(self, conn: Connection) -> None:
        """Stop a connection's client on a thread of its own: kazoo's `stop()` waits up to 10 s
        for a connection to a server that does not answer, and nothing of ours waits on that."""
        with conn.lock:
            if conn.stopped:
                return
            conn.stopped = True
        with self._lock:
            if conn in self._open:
                self._open.remove(conn)
        client = conn.client

        def stop() -> None:
            try:
                client.stop()
                client.close()
            except Exception as exc:  # kazoo raises if its writer does not stop in time
                log.debug("closing a ZooKeeper client: %s", describe(exc))

        threading.Thread(target=stop, name="zk-close", daemon=True).start()

    def close(self) -> None:
        """Close every session still open (a graceful close, bounded) and stop the clients.

        For ZooKeeper closing the session also removes its node, so the supervisor calls this
        only once nothing is held or after `resign`."""
        self.closed.set()
        with self._lock:
            conns = list(self._open)
        until = time.monotonic() + min(WITHDRAW_TIMEOUT, self.rpc_timeout)
        for conn in conns:
            self._close_session(conn, until)

    # -- a term: its session, its node, its renewals ------------------------------------------

    def _new_term(self, cancel: Flag) -> ZkTerm:
        """A new term in a session no term used before, renewed from now on."""
        while True:
            conn = self.conn
            if conn is None or conn.term is not None or not conn.ready():
                try:
                    self.connect(cancel)
                except BackendUnreachable as exc:
                    log.warning("%s; still trying", exc.message)
                    if self._sleep(RETRY_INTERVAL, cancel):
                        raise Cancelled() from None
                continue
            self._check_granted_timing(conn)
            term = self._claim(conn)
            if term is not None:
                break
        self._start_renewing(term)
        self.on_queued(term)
        return term

    def _claim(self, conn: Connection) -> ZkTerm | None:
        """Make `conn`'s session a new term's, if it is still the one it was connected with."""
        negotiated = conn.negotiated
        assert negotiated is not None
        with conn.lock:
            client_id = conn.client.client_id
            if (
                conn.term is not None
                or conn.stopped
                or client_id is None
                or client_id[0] != conn.session_id
            ):
                return None
            session_id, password = client_id
            clock = LeaseClock(
                ttl=negotiated,
                last_ack=conn.connect_sent_at,
                election=self.settings.election,
                listener=self.on_term_change,
            )
            term = ZkTerm(
                key="",
                clock=clock,
                handle={"session_id": int(session_id), "password": bytes(password).hex()},
                conn=conn,
                session_id=int(session_id),
                prefix=uuid.uuid4().hex + NODE_MARK,
                renew_interval=self._renew_interval(conn),
            )
            conn.term = term
        return term

    def _start_renewing(self, term: ZkTerm) -> None:
        thread = threading.Thread(
            target=self._renew_loop,
            args=(term,),
            name=f"zk-renew-{term.session_id:x}",
            daemon=True,
        )
        thread.start()

    def _renew_loop(self, term: ZkTerm) -> None:
        """Make one request per renew interval (a timer: the renewal's own period) and report
        its send time once answered, until the term ends.

        Nothing is sent while kazoo is reconnecting (requests would only queue up); the
        reconnection itself counts as a renewal (see `_on_state`), which also wakes this loop.
        The request is `exists` on our node with a watch, so a deletion ends the term at once.
        """
        client = term.client
        watch = self._own_node_watch(term)
        failing_since: float | None = None
        while not term.lost.is_set() and not self.closed.is_set():
            term.renew_now.clear()
            client_id = client.client_id
            if client_id is None:
                if failing_since is None:
                    failing_since = time.monotonic()
                self._pause(term, term.renew_interval)
                continue
            if client_id[0] != term.session_id:
                term.lose(f"the ZooKeeper session {term.session_id:x} was replaced")
                return
            node = term.node
            sent = time.monotonic()
            try:
                # Before we queue, any cheap read renews; the root of our elections needs no
                # permission beyond what `status` needs (it may not exist: that is an answer).
                stat = self._wait_result(
                    client.exists_async(node or self.root, watch=watch if node else None),
                    self.rpc_timeout,
                    *self._ends(term.lost),
                )
            except Cancelled:
                return
            except TRANSIENT_ERRORS as exc:
                metrics.backend_error(self.settings.election)
                if failing_since is None:
                    failing_since = sent
                    log.debug("session request failed: %s", describe(exc))
                if isinstance(exc, KazooTimeoutError) and client.connected:
                    self._drop_connection(client)
                self._sleep(RETRY_INTERVAL, term.lost)
                continue
            after = client.client_id
            if after is not None and after[0] == term.session_id and term.conn is not None:
                term.clock.acked(sent, term.conn.negotiated or term.clock.ttl)
                if failing_since is not None:
                    log.info("ZooKeeper answered again after %.1fs", sent - failing_since)
                    failing_since = None
            if node is not None and node == term.node:
                if stat is None:
                    term.lose(f"our {self._role(term)} node {node} was deleted")
                    return
                if stat.ephemeralOwner != term.session_id:
                    term.lose(f"our node {node} belongs to another session")
                    return
            self._pause(term, term.renew_interval)

    def _pause(self, term: ZkTerm, seconds: float) -> None:
        """Until the next renewal: woken early by a reconnection, our node's watch or the end."""
        with woken_by(term.renew_now, *self._ends(term.lost)):
            term.renew_now.wait(seconds)

    @staticmethod
    def _role(term: ZkTerm) -> str:
        return "leader" if term.elected else "candidate"

    def _own_node_watch(self, term: ZkTerm) -> Callable[[WatchedEvent], None]:
        """The watch on our own node (one callable per term, so kazoo keeps it once): deleted
        means the term is over; anything else (our own data change, a connection loss that
        drops every watch) means look again, which re-arms it."""

        def on_event(event: WatchedEvent) -> None:
            if event.type == EventType.DELETED and event.path == term.node:
                term.lose(f"our {self._role(term)} node {event.path} was deleted")
            term.renew_now.set()

        return on_event

    def _start_watching_step_down(self, term: ZkTerm) -> None:
        thread = threading.Thread(
            target=self._watch_step_down,
            args=(term,),
            name=f"zk-step-down-{term.session_id:x}",
            daemon=True,
        )
        thread.start()

    def _watch_step_down(self, term: ZkTerm) -> None:
        """Hand over when `step-down` asks this term to; clear a request for an ended term.

        The request is a node outside the queue (`step_down_path`); `exists` with a watch sees
        it created, changed or deleted, and a connection loss (which drops every watch) wakes
        us to look again. A request is emptied, not deleted, once dealt with, so the node keeps
        its ACL (see `_guard_step_down`).
        """
        path = step_down_path(self.root, self.settings.election)
        client = term.client
        ends = (term.lost,)
        self._guard_step_down(client, path, ends)
        while not term.lost.is_set() and not self.closed.is_set():
            wake = threading.Event()
            request: bytes | None = None
            try:
                stat = self._rpc(
                    client,
                    lambda c, woken=wake: c.exists_async(  # type: ignore[misc]
                        path, watch=wake_on(woken)
                    ),
                    ends=ends,
                )
                if stat is not None and stat.dataLength > 0:
                    data, stat = self._rpc(client, lambda c: c.get_async(path), ends=ends)
                    request = bytes(data)
                trusted = request is not None and self._trusted(client, path, ends)
            except NoNodeError:
                continue  # deleted between the reads: look again
            except (Cancelled, BackendUnreachable, BackendRefused):
                return
            if request:
                asked = requested_token(request)
                if not trusted:
                    log.warning(
                        "ignoring a step-down request written by someone --zk-auth-file does "
                        "not name (the request node lets others write it); replacing it"
                    )
                    if self._replace_request(client, path, stat.version, ends):
                        continue
                elif asked == term.token:
                    term.ask_handover(describe_requester(request))
                    return
                elif (asked is None or asked < term.token) and self._clear_request(
                    client, path, stat.version, ends
                ):
                    log.info("cleared a step-down request for an earlier term")
                    continue
            with woken_by(wake, *self._ends(term.lost)):
                wake.wait()

    def _guard_step_down(self, client: KazooClient, path: str, ends: tuple[Flag, ...]) -> None:
        """With `--zk-auth-file`, make the election's request node ours (empty, with our ACL)
        as soon as we lead, so `step-down` needs that identity (SPEC §7: write access); one
        that someone else created is not trusted (`_trusted`)."""
        if acl_for(self.settings) is None:
            return
        with suppress(KazooException, BackendUnreachable, BackendRefused, Cancelled):
            self._rpc(client, lambda c: ensure_step_down_dir(c, path), ends=ends, attempts=3)
            self._rpc(client, lambda c: c.create_async(path, b""), ends=ends, attempts=3)

    def _replace_request(
        self, client: KazooClient, path: str, version: int, ends: tuple[Flag, ...]
    ) -> bool:
        """Remove a request node others may write and put our own (empty) in its place;
        True when the node changed (look again)."""
        try:
            self._rpc(
                client, lambda c: c.delete_async(path, version=version), ends=ends, attempts=3
            )
        except (NoNodeError, BadVersionError):
            return True
        except (KazooException, BackendUnreachable, BackendRefused, Cancelled) as exc:
            log.debug("could not remove the untrusted step-down request: %s", describe(exc))
            return False
        self._guard_step_down(client, path, ends)
        return True

    def _trusted(self, client: KazooClient, path: str, ends: tuple[Flag, ...]) -> bool:
        """Whether a request at `path` can only have been written by our own identity: always
        without `--zk-auth-file`; with it, only when nobody else may write (or re-ACL) the
        node."""
        ours = acl_for(self.settings)
        if ours is None:
            return True
        acls, _ = self._rpc(client, lambda c: c.get_acls_async(path), ends=ends)
        writers = {acl.id for acl in acls if acl.perms & (Permissions.WRITE | Permissions.ADMIN)}
        return writers <= {ours[0].id}

    def _clear_request(
        self, client: KazooClient, path: str, version: int, ends: tuple[Flag, ...]
    ) -> bool:
        """Empty a request for an ended term, if unchanged; True once it is gone."""
        try:
            self._rpc(
                client,
                lambda c: c.set_async(path, b"", version=version),
                ends=ends,
                attempts=3,
            )
        except (NoNodeError, BadVersionError):
            return True  # gone or replaced: look again
        except (KazooException, BackendUnreachable, BackendRefused, Cancelled) as exc:
            log.debug("could not clear the stale step-down request: %s", describe(exc))
            return False
        return True

    # -- the election -------------------------------------------------------------------------

    def campaign(self, value: bytes, cancel: Flag) -> ZkTerm | None:
        while not cancel.is_set() and not self.closed.is_set():
            try:
                term = self._new_term(cancel)
            except Cancelled:
                return None
            try:
                token = self._join(term, value, cancel)
            except Cancelled:
                token = None
            except BaseException:
                self._withdraw(term)
                raise
            if token is not None and not term.lost.is_set():
                term.token = token
                term.renew_now.set()  # arm the watch on our node at once
                self._start_watching_step_down(term)
                return term
            if not cancel.is_set() and not self.closed.is_set():
                log.warning(
                    "%s while waiting; queueing again in a new session",
                    term.lost_reason or "our candidacy ended",
                )
            self._withdraw(term)
        return None

    def _join(self, term: ZkTerm, value: bytes, cancel: Flag) -> int | None:
        """Queue `term` and wait until it is first: its token, or None when the term ended."""
        ends = (cancel, term.lost)
        client = term.client
        self._rpc(client, lambda c: c.ensure_path_async(self.election_node), ends=ends)
        if not self._create_node(term, value, ends):
            return None
        return self._wait_until_first(term, ends)

    def _withdraw(self, term: ZkTerm) -> None:
        """Leave the queue without waiting long: closing the session removes our node (and any
        other of the session's); a store that does not answer lets the session expire, and
        the next term deletes what is left of this one (`_leftovers`)."""
        term.lose("withdrawn")
        assert term.conn is not None
        # Closing the session the client holds now removes the term's node only if that is
        # still the term's session; after a session change, or without an answer, a node of
        # the term may be left: the next term deletes it when it finds it in the queue.
        self._leave_behind(term)
        until = time.monotonic() + min(WITHDRAW_TIMEOUT, self.rpc_timeout)
        if not self._close_session(term.conn, until):
            log.debug("could not close the session of %s; it expires by itself", term.node)

    def _leave_behind(self, term: ZkTerm) -> None:
        """Remember an ended term's prefix for as long as a node of it could outlive it."""
        self._leftovers[term.prefix] = time.monotonic() + 2 * term.clock.ttl

    def _check_granted_timing(self, conn: Connection) -> None:
        """Refuse to lead when the session timeout the server granted cannot keep the timing
        rule (its min/maxSessionTimeout, 2 and 20 ticks by default, bound what we asked)."""
        if conn.negotiated is None:
            return
        timing = Timing(
            ttl=conn.negotiated,
            kill_grace=self.settings.timing.kill_grace,
            renew_interval=self._renew_interval(conn),
        )
        try:
            timing.check("granted session timeout")
        except UsageError:
            raise UsageError(
                f"ZooKeeper granted a session timeout of {conn.negotiated:g}s (asked "
                f"{self.settings.timing.ttl:g}s), too short for renew interval "
                f"{timing.renew_interval:g}s + kill grace {timing.kill_grace:g}s + safety "
                f"{timing.safety:g}s; lower --kill-grace or raise maxSessionTimeout on the servers"
            ) from None

    def _create_node(self, term: ZkTerm, value: bytes, ends: tuple[Flag, ...]) -> bool:
        """Create the term's ephemeral sequential node; False if the term ended first.

        A create may succeed on the server while its answer is lost (or land later, sent by
        kazoo after a reconnection): the term's prefix lets us find it again, as kazoo's
        `Lock._find_node` does, instead of queueing twice. Every node with the prefix is in
        the term's session, or the term is lost: kazoo sends requests only in the session it
        holds, and a new session ends the term.
        """
        base = f"{self.election_node}/{term.prefix}"
        client = term.client
        while True:
            try:
                created = self._rpc(
                    client,
                    lambda c: c.create_async(base, value, ephemeral=True, sequence=True),
                    ends=ends,
                    attempts=1,
                )
            except NoNodeError:  # someone removed the election node: make it again
                self._rpc(client, lambda c: c.ensure_path_async(self.election_node), ends=ends)
                continue
            except BackendUnreachable:
                try:
                    found = self._find_own(term, ends)
                except BackendUnreachable:
                    found = None
                if found is None:
                    if self._sleep(RETRY_INTERVAL, *ends):
                        raise Cancelled() from None
                    continue
                created = found
            if term.lost.is_set():
                return False
            term.node = term.key = str(created)
            term.renew_now.set()  # the renew thread watches our node from now on
            return True

    def _find_own(self, term: ZkTerm, ends: tuple[Flag, ...]) -> str | None:
        """The term's node in the queue (the first, if a retried create made two), or None."""
        children = self._rpc(
            term.client, lambda c: c.get_children_async(self.election_node), ends=ends
        )
        mine = [c for c in contenders(children) if c.name.startswith(term.prefix)]
        return f"{self.election_node}/{mine[0].name}" if mine else None

    def _wait_until_first(self, term: ZkTerm, ends: tuple[Flag, ...]) -> int | None:
        """Block until the term's node is first in the queue: its czxid; None when the term
        ended (our node vanished or is not in the term's session)."""
        client = term.client
        ahead_seen: str | None = None
        while True:
            queue_now = contenders(
                self._rpc(client, lambda c: c.get_children_async(self.election_node), ends=ends)
            )
            mine = [c for c in queue_now if c.name.startswith(term.prefix)]
            if not mine:
                term.lose(f"our candidate node {term.node} vanished")
                return None
            ours = mine[0]
            node = f"{self.election_node}/{ours.name}"
            if node != term.node:
                term.node = term.key = node
                term.renew_now.set()
            now = time.monotonic()
            self._leftovers = {p: t for p, t in self._leftovers.items() if t > now}
            stale = [
                c
                for c in queue_now
                if c is not ours and (c in mine or prefix_of(c.name) in self._leftovers)
            ]
            # A second node of this term (a retried create that landed after all), or one of
            # an earlier term of ours that outlived it: ours to remove, not to wait behind.
            # (One we could not delete is waited behind like any other: it expires.)
            if stale and sum(self._delete_stale(client, c, ends) for c in stale):
                continue
            ahead = [c for c in queue_now if c.sequence < ours.sequence]
            if not ahead:
                return self._first(term, node, ends)
            predecessor = f"{self.election_node}/{ahead[-1].name}"
            wake = threading.Event()
            try:
                data, stat = self._rpc(
                    client,
                    lambda c, path=predecessor, woken=wake: c.get_async(  # type: ignore[misc]
                        path, watch=wake_on(woken)
                    ),
                    ends=ends,
                )
            except NoNodeError:
                continue  # gone already: look again
            if predecessor != ahead_seen:
                ahead_seen = predecessor
                self.on_waiting(Candidate(predecessor, int(stat.czxid), bytes(data)))
            with woken_by(wake, *self._ends(*ends)):
                wake.wait()

    def _first(self, term: ZkTerm, node: str, ends: tuple[Flag, ...]) -> int | None:
        """Our node is first: its czxid, once the server confirmed it is the term's."""
        sent = time.monotonic()
        stat = self._rpc(term.client, lambda c: c.exists_async(node), ends=ends)
        if stat is None:
            term.lose(f"our candidate node {node} vanished")
            return None
        if stat.ephemeralOwner != term.session_id:
            term.lose(
                f"our candidate node {node} belongs to session {stat.ephemeralOwner:x}, not to "
                f"this term's {term.session_id:x}"
            )
            return None
        client_id = term.client.client_id
        if client_id is not None and client_id[0] == term.session_id:
            term.clock.acked(sent, term.clock.ttl)  # an answer in the term's session
        return int(stat.czxid)

    def _delete_stale(
        self, client: KazooClient, contender: Contender, ends: tuple[Flag, ...]
    ) -> bool:
        """Delete a leftover node of ours; True once it is gone."""
        log.debug("removing a leftover candidate node of ours: %s", contender.name)
        try:
            self._rpc(
                client,
                lambda c: c.delete_async(f"{self.election_node}/{contender.name}"),
                ends=ends,
                attempts=1,
            )
        except NoNodeError:
            return True
        except (BackendUnreachable, KazooException) as exc:
            log.debug("could not remove %s: %s", contender.name, describe(exc))
            return False
        return True

    # -- leaving ------------------------------------------------------------------------------

    def resign(self, term: Term) -> bool:
        """Delete our node (the next candidate is woken at once), then close the session.

        True only when the server confirmed one of them: the delete answered (or our node was
        gone already), or the close answered. Otherwise the session was dropped all the same,
        and expires by itself within its timeout; the next campaign is in a new session, which
        deletes this term's node if it finds it still queued.
        """
        assert isinstance(term, ZkTerm) and term.conn is not None
        term.lose("resigned")
        conn = term.conn
        deadline = time.monotonic() + 2 * self.rpc_timeout
        gone = False
        failure: BaseException | None = None
        node = term.node
        if node is not None and not conn.stopped:
            try:
                self._rpc(conn.client, lambda c: c.delete_async(node), until=deadline)
                gone = True
            except NoNodeError:
                gone = True
            except (BackendUnreachable, Cancelled) as exc:
                failure = exc.__cause__ or exc
        closed = self._close_session(conn, max(deadline, time.monotonic() + 0.5))
        self._leave_behind(term)  # see `_withdraw`
        term.released = gone or closed
        if not term.released:
            log.warning(
                "could not delete our candidate node %s (%s); it goes when session %x expires "
                "within %gs",
                node,
                describe(failure),
                term.session_id,
                term.clock.ttl,
            )
        return term.released

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

    def announce(self, term: Term, value: bytes) -> None:
        """Sent without waiting for the answer: it is cosmetic, and must not block on a server
        that does not answer. Only on the term's own node, through its own session."""
        assert isinstance(term, ZkTerm)
        node, conn = term.node, term.conn
        if node is None or conn is None or conn.stopped or term.lost.is_set():
            return
        with suppress(*TRANSIENT_ERRORS):
            conn.client.set_async(node, value)

    # -- last-run record ------------------------------------------------------------------------

    def last_run(self) -> bytes | None:
        try:
            data, _ = self._get(self.election_node, attempts=8)
        except NoNodeError:
            return None
        return data or None

    def record_run(self, term: Term, record: bytes) -> bool:
        """One multi-op: our node still exists (its path is unique to this candidacy, so that
        means we still lead) and the record is written, or nothing is."""
        assert isinstance(term, ZkTerm) and term.conn is not None
        node = term.node
        if node is None:
            return False

        def commit(client: KazooClient) -> Any:
            transaction = client.transaction()
            transaction.check(node, -1)
            transaction.set_data(self.election_node, record)
            return transaction.commit_async()

        results = self._rpc(term.conn.client, commit, attempts=8)
        return not any(isinstance(result, Exception) for result in results)

    # -- observing and steering -----------------------------------------------------------------

    def elections(self) -> list[str]:
        try:
            names = self._children(self.root)
        except NoNodeError:
            return []
        found = []
        for name in sorted(names):
            if not ELECTION_NAME.fullmatch(name):
                continue  # the step-down requests' node, or something not ours
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
            request, _ = self._get(step_down_path(self.root, election))
        except NoNodeError:
            request = b""
        try:
            record, _ = self._get(path)
            children = self._children(path)
        except NoNodeError:
            return ElectionView(election, (), step_down=request or None)
        candidates = []
        for contender in contenders(children):
            key = f"{path}/{contender.name}"
            try:
                data, stat = self._get(key)
            except NoNodeError:
                continue  # left while we looked
            candidates.append(Candidate(key, int(stat.czxid), bytes(data)))
        return ElectionView(
            election,
            tuple(candidates),
            bytes(record) if record else None,
            step_down=request or None,
        )

    def request_step_down(self, election: str, leader: Candidate, request: bytes) -> bool:
        """One multi-op: the leader's node still exists (its path is unique to its candidacy,
        and a queued node stays first once first) and the request is written, or nothing is."""
        path = step_down_path(self.root, election)
        self._read(lambda c: ensure_step_down_dir(c, path))
        for _ in range(3):
            exists = self._read(lambda c: c.exists_async(path)) is not None

            def commit(client: KazooClient, exists: bool = exists) -> Any:
                transaction = client.transaction()
                transaction.check(leader.key, -1)
                if exists:
                    transaction.set_data(path, request)
                else:
                    transaction.create(path, request)
                return transaction.commit_async()

            results = self._read(commit)
            failures = [result for result in results if isinstance(result, Exception)]
            if not failures:
                return True
            if isinstance(results[0], NoNodeError):
                return False  # the leader's node is gone: it no longer leads
            for failure in failures:
                self._raise_if_refused(failure)
            # The request node was created or deleted meanwhile: write it again.
        raise BackendUnreachable("could not write the step-down request (it kept changing)")

    def withdraw_step_down(self, election: str, request: bytes) -> None:
        """Empty the request node if it still holds `request` (emptied, not deleted: it keeps
        the ACL the leader gave it)."""
        path = step_down_path(self.root, election)
        try:
            data, stat = self._get(path)
        except NoNodeError:
            return
        if data != request:
            return
        with suppress(NoNodeError, BadVersionError):
            self._read(lambda c: c.set_async(path, b"", version=stat.version))

    def force_step_down(self, election: str) -> Candidate | None:
        leader = self.view(election).leader
        if leader is None:
            return None
        with suppress(NoNodeError):
            self._read(lambda c: c.delete_async(leader.key))
        return leader

    # -- helpers ------------------------------------------------------------------------------

    def _read(self, call: Callable[[KazooClient], Any], attempts: int | None = None) -> Any:
        """A request of the read paths, on the connection `connect` opened, bounded by the
        connect timeout (or `attempts`)."""
        conn = self.conn
        if conn is None or conn.stopped:
            raise BackendUnreachable("not connected to ZooKeeper")
        until = None if attempts is not None else time.monotonic() + self.settings.connect_timeout
        return self._rpc(conn.client, call, until=until, attempts=attempts)

    def _get(self, path: str, attempts: int | None = None) -> tuple[bytes, Any]:
        """Data and stat of `path` (NoNodeError when it does not exist)."""
        data, stat = self._read(lambda c: c.get_async(path), attempts=attempts)
        return bytes(data or b""), stat

    def _children(self, path: str, include_data: bool = False) -> Any:
        """Children of `path`, with its stat when `include_data` (as kazoo returns them)."""
        return self._read(lambda c: c.get_children_async(path, include_data=include_data))


def ensure_step_down_dir(client: KazooClient, request_path: str) -> Any:
    """The node holding every election's step-down request, with an open ACL: each request
    node carries its own election's ACL, and one election's `--zk-auth-file` must not keep
    others from asking their leaders to step down."""
    return client.ensure_path_async(request_path.rsplit("/", 1)[0], acl=OPEN_ACL_UNSAFE)


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


__all__ = ["NODE_MARK", "ZkTerm", "ZooKeeperBackend", "contenders"]
