"""ZooKeeper backend: kazoo's election layout, with our own timing of the session.

Store layout, as kazoo's `Election`/`Lock` recipe makes it (so `Election(...).contenders()`
lists our candidates): each candidate creates an ephemeral sequential node
`<chroot><prefix>/<election>/<uuid hex>__lock__<10-digit sequence>` whose data is its value;
the leader is the node with the lowest sequence, and its `czxid` is the fencing token. A waiter
watches only the node just ahead of it. The election's own node holds the last-run record.

Under `--max-holders N` (N > 1) the layout is kazoo's `Semaphore` recipe with the election node
as the semaphore's path (so `Semaphore(...).lease_holders()` lists our holders, and kazoo's own
semaphore users queue with us): candidates queue as above in the lock node
`<election>-__lock__` (kazoo's `Semaphore.lock_path`, a sibling of the election node), and each
holder has an ephemeral lease node `<election>/<uuid hex>` (its term's own uuid, so a retried
create is found again) whose data is its value with its `slot`, and whose `czxid` is its
fencing token. Only the first of the lock queue watches the leases (the election node's
children); it waits until fewer than N exist, picks the lowest slot no lease has (it alone
picks, so no two holders get one slot), then creates its lease and deletes its lock node in
one transaction, which wakes the next waiter (watching that lock node) at once. Any other
waiter watches the lock node just ahead of it, as with N = 1. kazoo's Semaphore checks its N
against the election node's data when that is numeric; our last-run record there is JSON,
which kazoo ignores. N is agreed between leaderrun candidates through their values (`holders`):
a candidate reads the lock queue and the leases before creating anything (an N = 1 candidate
too), and each waiter checks the one just ahead of it and the lock's first the leases, so a
mismatch withdraws and exits 2.

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
- bounds each step of kazoo's connection to one member (TCP connect, TLS handshake, Connect) by
  `member_timeout`, about a second, instead of kazoo's T and T / number of members, so a member
  that drops packets is passed over well inside the margin;
- never sleeps to poll: waits are on the predecessor's watch, the term's `lost`, the campaign's
  `cancel` or `close()`, and retries are paced by a cancellable wait;
- treats LOST (session expired or closed), a new session id and the deletion of our node as
  the end of the term;
- on an ensemble, moves the clock only to renewals the ensemble leader has surely heard of: a
  follower cut off from the leader answers reads and pings for up to syncLimit * tickTime, and
  forwards the sessions it touched only in its replies to the leader's pings. So each renewal
  also sends a `sync`, which the member answers only once the leader did, and that answer
  vouches for the renewals answered two ticks (`sync_bound`, tickTime from the server's `conf`
  or `--zk-tick-time`) before it was sent (`_vouched`; docs/backends.md, "A ZooKeeper
  follower cut off from the ensemble leader"); renewals then go every half renew interval. A
  (re)connect is answered only after the leader touched the session, so it counts at once; a
  standalone server decides expiry itself, and is renewed as before.

`resign` deletes our node (the next candidate is woken at once) and closes the session; it
reports the release only once the server confirmed one of them.

`step-down` writes its request in a node outside the queue (`step_down_path`, so kazoo's
contenders never see it), which the leader watches from its election on.

With `--zk-auth-file` (digest `user:password`) the nodes we create get an ACL that lets only
that identity change them and everyone read them; a refusal by an ACL exits 77. The leader then
also makes its election's step-down request node its own, and honours a request only in a node
nobody else may write.

`zks://` is TLS to the servers' secureClientPort (kazoo's `use_ssl`, `--cacert` as the CA with
host names checked, `--cert`/`--key` as the client certificate). A certificate refused either
way exits 77 once every listed member refused it; a handshake that fails otherwise (a plaintext
port), or a `zk://` connection the server closes unanswered (a TLS port), is unreachable (69)
with a hint at the other scheme.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kazoo.client import KazooClient
from kazoo.exceptions import (
    AuthFailedError,
    BadVersionError,
    ConnectionClosedError,
    ConnectionDropped,
    ConnectionLoss,
    KazooException,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    OperationTimeoutError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError, SequentialThreadingHandler
from kazoo.handlers.utils import create_tcp_connection
from kazoo.protocol.serialization import Close, Connect
from kazoo.protocol.states import EventType, KazooState, KeeperState, WatchedEvent
from kazoo.retry import KazooRetry
from kazoo.security import ACL, OPEN_ACL_UNSAFE, Permissions, make_acl, make_digest_acl

from leaderrun import metrics
from leaderrun.backends import (
    OUTCOME_ATTEMPTS,
    OUTCOME_DIR,
    OUTCOME_TIMEOUT,
    STEP_DOWN_DIR,
    Backend,
    Cancelled,
    Candidate,
    ElectionView,
    Flag,
    LeaseClock,
    Term,
    check_max_holders,
    election_holders,
    outcome_path,
    step_down_path,
    woken_by,
)
from leaderrun.errors import BackendRefused, BackendUnreachable, UsageError
from leaderrun.record import (
    describe_requester,
    int_field,
    outcome_token,
    requested_token,
    with_fields,
)
from leaderrun.settings import ELECTION_NAME, KILL_LEAD, Settings, Timing

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
#: The shortest renew interval chosen on an ensemble when none was given (`_renew_interval`).
MIN_ENSEMBLE_RENEW = 0.5
#: Reconnect quickly: a member restart or leader change must be survived within the margin.
RECONNECT_DELAY = 0.1
RECONNECT_MAX_DELAY = 1.0
RECONNECT_JITTER = 0.2
#: How long a withdrawn candidacy (cancelled, or its session gone) may spend closing its
#: session: the supervisor expects `campaign` back within a request's timeout of a cancel.
WITHDRAW_TIMEOUT = 1.0
#: The longest kazoo may spend on one member before it tries the next: the TCP connect, the TLS
#: handshake and ZooKeeper's Connect request, each. kazoo's own bounds grow with the session
#: timeout T (T for the TCP connect and the TLS handshake, T / number of members for Connect),
#: so a member that drops packets (no RST, no answer) could hold a reconnecting client past the
#: point where the child must be stopped. A healthy member answers each in a few round trips.
MEMBER_TIMEOUT_MAX = 1.0
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


def leases_among(children: list[str]) -> list[str]:
    """The children of an election node that are not queued candidates: under
    `--max-holders` the holders' lease nodes (kazoo's `Semaphore` names them `<uuid hex>`)."""
    return [child for child in children if CONTENDER.search(child) is None]


def lock_node_of(election_node: str) -> str:
    """Where kazoo's `Semaphore(election_node)` queues for its lock: a sibling of the node
    (`Semaphore.lock_path`), a Lock-recipe queue like an N = 1 election's."""
    return f"{election_node}-{NODE_MARK}"


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


def member_timeout(settings: Settings) -> float:
    """How long kazoo may wait on one member for each step of a connection (see
    `MEMBER_TIMEOUT_MAX`): well inside the slack the timing rule leaves between a renewal that
    went unanswered and the point where the child must be stopped."""
    return max(0.5, min(MEMBER_TIMEOUT_MAX, settings.timing.renew_interval / 2))


#: The reason in an `ssl.SSLError`'s text: `[SSL: CODE] reason (_ssl.c:1006)`.
SSL_REASON = re.compile(r"^(?:\[[^\]]*\]\s*)?(?P<reason>.*?)(?:\s*\(_ssl\.c:\d+\))?$")


def tls_reason(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    match = SSL_REASON.match(text.splitlines()[0] if text else "")
    return (match["reason"] if match else text) or type(exc).__name__


def is_tls_refusal(exc: ssl.SSLError) -> bool:
    """A TLS identity problem (exit 77): we did not trust the server's certificate, or the
    server refused ours (a TLS alert). Not one: the peer closed the connection mid-handshake or
    spoke something else than TLS (a plaintext port, a server not serving yet)."""
    reason = (exc.reason or "").upper()
    return isinstance(exc, ssl.SSLCertVerificationError) or "ALERT" in reason


class MemberHandler(SequentialThreadingHandler):  # type: ignore[misc]
    """kazoo's threading handler, with each member's TCP connect and TLS handshake bounded by
    `member_timeout` (kazoo asks for the whole session timeout), and with what went wrong
    with the members remembered for `connect`'s error message.

    The TLS failure is recorded here, on kazoo's connection thread, where kazoo turns it into
    a dropped connection and goes on with the next member."""

    def __init__(self, member_timeout: float) -> None:
        super().__init__()
        self.member_timeout = member_timeout
        #: The last TLS failure, and how many TLS refusals came in a row (reset by a session).
        self.tls_failure: ssl.SSLError | None = None
        self.refusals = 0
        #: A member closed the connection before answering Connect (a TLS port, for zk://).
        self.closed_early = False
        #: Called after each failure (on kazoo's thread; must not block).
        self.on_failure: Callable[[], None] = lambda: None

    def create_connection(self, *args: Any, **kwargs: Any) -> Any:
        timeout = kwargs.get("timeout")
        kwargs["timeout"] = (
            self.member_timeout if timeout is None else min(timeout, self.member_timeout)
        )
        try:
            return super().create_connection(*args, **kwargs)
        except ssl.SSLError as exc:
            self.failed_tls(exc)
            raise

    def failed_tls(self, exc: ssl.SSLError) -> None:
        self.tls_failure = exc
        if is_tls_refusal(exc):
            self.refusals += 1
        else:
            self.closed_early = True
        self.on_failure()

    def failed_connect(self, exc: BaseException) -> None:
        """Connect (or Auth) failed on a connection that was open: look for why."""
        cause = exc.__context__ if isinstance(exc, ConnectionDropped) else exc
        if isinstance(cause, ssl.SSLError):
            self.failed_tls(cause)
        elif isinstance(exc, ConnectionDropped):
            self.closed_early = True
            self.on_failure()


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
    security = settings.security
    return KazooClient(
        hosts=hosts_of(settings),
        handler=MemberHandler(member_timeout(settings)),
        # zks://: TLS with the servers' certificates checked against --cacert (the system's
        # CAs without it), host names included, as ZooKeeper's own Java client does; a client
        # certificate with --cert/--key (ssl.clientAuth=need on the servers asks for one).
        use_ssl=settings.backend.scheme == "zks",
        ca=security.cacert,
        certfile=security.cert,
        keyfile=security.key,
        verify_certs=True,
        check_hostname=settings.backend.scheme == "zks",
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


def tls_refusal_error(settings: Settings, exc: ssl.SSLError) -> BackendRefused:
    """Exit 77 for a TLS identity problem, naming the side and the option to fix."""
    reason = tls_reason(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return BackendRefused(
            f"TLS with ZooKeeper at {settings.backend} failed: we do not trust the server's "
            f"certificate ({reason}); check --cacert (the CA that signed the servers' "
            "certificates, for the host names in --backend)"
        )
    if not settings.security.cert:
        return BackendRefused(
            f"TLS with ZooKeeper at {settings.backend} failed: the server wants a client "
            f"certificate and none was given ({reason}); give --cert and --key (a certificate "
            "signed by a CA in the servers' ssl.trustStore)"
        )
    return BackendRefused(
        f"TLS with ZooKeeper at {settings.backend} failed: the server refused our client "
        f"certificate ({reason}); check --cert and --key (a certificate signed by a CA in the "
        "servers' ssl.trustStore)"
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
    #: Our node's full path, once created (or found again by `prefix`); under
    #: `--max-holders`, our lock node while waiting, our lease node once holding.
    node: str | None = None
    #: The value we queued with (a lease node's data is it, with our slot).
    value: bytes = b""
    renew_interval: float = 1.0
    #: Wakes the renew thread at once (reconnected, our node changed, elected).
    renew_now: threading.Event = field(default_factory=threading.Event, repr=False)
    #: 2 * tickTime on an ensemble (see `ZooKeeperBackend._vouched`); 0 on a standalone
    #: server, whose every answer is the expiring server's own.
    sync_bound: float = 0.0

    @property
    def client(self) -> KazooClient:
        assert self.conn is not None
        return self.conn.client


class ZooKeeperBackend(Backend):
    """Read paths share one connection; each candidacy is a `ZkTerm` with a session of its own."""

    schemes = ("zk", "zks")

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.rpc_timeout = max(0.5, min(2.0, settings.timing.renew_interval))
        #: `<chroot><prefix>`: where elections live; `root/<election>` is one election.
        self.root = settings.backend.path + settings.prefix
        self.election_node = f"{self.root}/{settings.election}"
        #: Under `--max-holders` N > 1, the semaphore's lock queue, where candidates wait;
        #: the election node's children are then the holders' leases.
        self.lock_node = lock_node_of(self.election_node)
        #: Where our candidates queue: the election node itself with N = 1.
        self.queue_node = self.election_node if settings.max_holders == 1 else self.lock_node
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
        #: `ZkTerm.sync_bound` for this backend's servers, once known (`_ensemble_bound`).
        self.sync_bound: float | None = None
        self.sync_bound_source = ""

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
        handler: MemberHandler = conn.client.handler
        handler.on_failure = conn.changed.set
        members = len(self.settings.backend.endpoints)
        with self._lock:
            self._open.append(conn)
        give_up_at = time.monotonic() + self.settings.connect_timeout
        try:
            conn.client.start_async()
            while (
                not conn.ready()
                and conn.client.client_state != KeeperState.AUTH_FAILED
                # Every member refused TLS in turn: retrying only repeats it.
                and handler.refusals < members
            ):
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
        tls = handler.tls_failure
        if tls is not None and is_tls_refusal(tls):
            raise tls_refusal_error(self.settings, tls)
        raise BackendUnreachable(
            f"cannot reach ZooKeeper at {self.settings.backend} within "
            f"{self.settings.connect_timeout:g}s {self._unreachable_reason(handler)}"
        )

    def _unreachable_reason(self, handler: MemberHandler) -> str:
        """Why no member gave us a session, and the fix, for the one-line message."""
        if self.settings.backend.scheme == "zks" and handler.tls_failure is not None:
            return (
                f"(the TLS handshake failed: {tls_reason(handler.tls_failure)}); if that port "
                "is ZooKeeper's plaintext clientPort use zk://, else give its secureClientPort"
            )
        if self.settings.backend.scheme == "zk" and handler.closed_early:
            return (
                "(the server closed the connection without answering); if that port is a TLS "
                "secureClientPort use zks:// with --cacert, --cert and --key, else check that "
                "ZooKeeper is serving"
            )
        return "(no server answered); check --backend and that ZooKeeper is running"

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
        """Renewing at a quarter of a TTL we did not get would make the child look at risk.

        On an ensemble the clock lags the newest answer by the sync bound (`_vouched`); a
        renew interval nobody asked for then shrinks to leave room for it, so that the default
        `--ttl 10s` still fits the common tickTime of 2 s (an explicit one is kept, and
        checked)."""
        timing = self.settings.timing
        negotiated = conn.negotiated or timing.ttl
        interval = min(timing.renew_interval, negotiated / 4)
        if self.sync_bound and not timing.renew_given:
            spare = negotiated - self.sync_bound - timing.kill_grace - KILL_LEAD
            spare -= timing.with_granted_ttl(negotiated).safety
            interval = min(interval, max(MIN_ENSEMBLE_RENEW, 0.8 * spare))
        return interval

    @staticmethod
    def _record_negotiation(conn: Connection) -> None:
        """Learn the session timeout the server granted, and when we asked for it.

        kazoo reads the granted timeout from the server's answer to Connect but keeps it to
        itself (it stores only the one we asked for), so we look at that answer on its way
        through the connection's `_invoke`. The send time of an answered Connect is also a
        renewal: a (re)connect touches the session on the server.

        `_invoke` is used only while connecting (Connect, then Auth): its timeout is bounded by
        the handler's `member_timeout` (kazoo asks for T / number of members), and why it
        failed is recorded for `_open_connection`'s message. A TLS error there (TLS 1.3 tells
        a refused client certificate only after the handshake) is a dropped connection, so
        kazoo goes on with the next member instead of ending its connection thread.
        """
        connection = conn.client._connection
        invoke = connection._invoke
        handler = conn.client.handler

        def recording_invoke(timeout: float, request: Any, xid: int | None = None) -> Any:
            if isinstance(handler, MemberHandler):
                timeout = min(timeout, handler.member_timeout)
            sent = time.monotonic()
            try:
                result = invoke(timeout, request, xid)
            except ssl.SSLError as exc:
                if isinstance(handler, MemberHandler):
                    handler.failed_connect(exc)
                raise ConnectionDropped(f"TLS error: {tls_reason(exc)}") from exc
            except ConnectionDropped as exc:
                if isinstance(handler, MemberHandler):
                    handler.failed_connect(exc)
                raise
            if isinstance(handler, MemberHandler) and isinstance(request, Connect):
                handler.refusals = 0
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
                        "reconnected to ZooKeeper after %.2fs (member %s); session %x kept",
                        took,
                        member_of(client),
                        session_id,
                    )
                else:
                    log.info(
                        "reconnected to ZooKeeper after %.2fs (member %s) in a new session %x; "
                        "the old session is gone",
                        took,
                        member_of(client),
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
            if not self._check_granted_timing(conn):
                # The member did not answer the four-letter words (hung, or going away).
                if self._sleep(RETRY_INTERVAL, cancel):
                    raise Cancelled()
                continue
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
                sync_bound=self.sync_bound or 0.0,
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
        #: (sent, answered) of renewals the leader may not have heard of yet, oldest first.
        unvouched: deque[tuple[float, float]] = deque()
        connected_at = term.conn.connect_sent_at if term.conn is not None else 0.0
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
                # On an ensemble, a `sync` first: answered only once the ensemble leader
                # answered it (`_vouched`); the read after it is answered after it.
                synced = client.sync_async("/") if term.sync_bound else None
                # Before we queue, any cheap read renews; the root of our elections needs no
                # permission beyond what `status` needs (it may not exist: that is an answer).
                exists = client.exists_async(node or self.root, watch=watch if node else None)
                if synced is not None:
                    self._wait_result(synced, self.rpc_timeout, *self._ends(term.lost))
                stat = self._wait_result(
                    exists,
                    max(0.05, sent + self.rpc_timeout - time.monotonic()),
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
                ttl = term.conn.negotiated or term.clock.ttl
                if not term.sync_bound:
                    term.clock.acked(sent, ttl)
                else:
                    if term.conn.connect_sent_at != connected_at:
                        # Another connection: its Connect was the leader's touch (`_on_state`
                        # counted it), and this member vouches for nothing the old one answered.
                        connected_at = term.conn.connect_sent_at
                        unvouched.clear()
                    unvouched.append((sent, time.monotonic()))
                    metrics.renewed(self.settings.election, sent)
                    vouched = self._vouched(unvouched, term.sync_bound)
                    if vouched is not None:
                        term.clock.acked(vouched, ttl, record=False)
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
            # On an ensemble the clock lags a renewal behind (`_vouched`): renew twice as often.
            self._pause(term, term.renew_interval / 2 if term.sync_bound else term.renew_interval)

    @staticmethod
    def _vouched(unvouched: deque[tuple[float, float]], bound: float) -> float | None:
        """The send time of the newest renewal the ensemble leader has surely heard of, now
        that the last one in `unvouched` was answered (docs/backends.md); those are removed.

        The renewal just answered began with a `sync` sent at `s`. A follower forwards it to
        the leader (`FollowerRequestProcessor`, `Learner.request`) and answers it only when the
        leader's SYNC comes back (`Follower.processPacket`, `FollowerZooKeeperServer.sync`),
        which the leader sends after reading the request (`LearnerHandler.run`,
        `Leader.processSync`). Everything the follower wrote to the leader before forwarding it
        was read first, on the same connection: among it its replies to the leader's pings,
        which carry every session it touched before (`Learner.ping`,
        `LearnerSessionTracker.snapshot`), and which the leader touches as it reads them
        (`LearnerHandler.run`, `PING`). The leader pings every tickTime/2 (`Leader.lead`), so
        a renewal the follower answered `bound` (two ticks: one for the ping period, one for
        delays) before `s` was touched on the leader, which cannot expire the session before
        that renewal's send time plus the timeout (`SessionTrackerImpl.touchSession`,
        `ExpiryQueue.update` rounds up). On the leader itself every answer is a touch.
        """
        cutoff = unvouched[-1][0] - bound
        vouched = None
        while unvouched and unvouched[0][1] <= cutoff:
            vouched = unvouched.popleft()[0]
        return vouched

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
        path = self.own_step_down_path(term)
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

    def own_step_down_path(self, term: Term) -> str:
        """As `Backend.own_step_down_path`, under the URL's path (our chroot) too."""
        slot = term.slot if self.settings.max_holders > 1 else None
        return step_down_path(self.root, self.settings.election, slot)

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
        self._check_election(client, ends)  # before writing anything
        self._rpc(client, lambda c: c.ensure_path_async(self.election_node), ends=ends)
        if self.queue_node != self.election_node:
            self._rpc(client, lambda c: c.ensure_path_async(self.queue_node), ends=ends)
        term.value = value
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

    def _check_granted_timing(self, conn: Connection) -> bool:
        """Refuse to lead when the session timeout the server granted cannot keep the timing
        rule (its min/maxSessionTimeout, 2 and 20 ticks by default, bound what we asked), or,
        on an ensemble, cannot cover `sync_bound` too. False: the member did not say whether
        it is in an ensemble (no answer); try again."""
        if conn.negotiated is None:
            return True
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
        bound = self._ensemble_bound(conn)
        if bound is None:
            return False
        if not bound:
            return True
        timing = Timing(
            ttl=conn.negotiated,
            kill_grace=self.settings.timing.kill_grace,
            renew_interval=self._renew_interval(conn),  # now that the bound is known
        )
        if timing.renew_interval < min(self.settings.timing.renew_interval, conn.negotiated / 4):
            log.info(
                "renewing every %gs (not TTL/4) to leave room for the ensemble's %gs bound",
                timing.renew_interval,
                bound,
            )
        # Renewals go every half interval, and the clock lags the newest answered one by the
        # bound plus half an interval (`_vouched`): a whole interval and the bound in all.
        needed = timing.renew_interval + bound + timing.kill_grace + timing.safety + KILL_LEAD
        if needed >= conn.negotiated:
            raise UsageError(
                f"ZooKeeper at {self.settings.backend} is an ensemble: a follower's answer "
                f"proves the ensemble leader heard of renewals only {bound:g}s older "
                f"({self.sync_bound_source}), so the session timeout {conn.negotiated:g}s must "
                f"exceed that + renew interval {timing.renew_interval:g}s + kill grace "
                f"{timing.kill_grace:g}s + safety {timing.safety:g}s + {KILL_LEAD:g}s = "
                f"{needed:g}s; raise --ttl (and maxSessionTimeout on the servers) or lower "
                "--renew-interval / --kill-grace"
            )
        return True

    def _ensemble_bound(self, conn: Connection) -> float | None:
        """`ZkTerm.sync_bound` (see `_vouched`): two ticks on an ensemble, 0 on a standalone
        server; the tick from `--zk-tick-time`, else asked once from the member `conn` is
        connected to (`srvr` for its mode, `conf` for its tickTime; the members are assumed to
        share one tickTime). None when the member did not answer; a usage error when it
        refuses to tell (not in its `4lw.commands.whitelist`)."""
        if self.sync_bound is not None:
            return self.sync_bound
        if self.settings.zk_tick_time is not None:
            self.sync_bound = 2 * self.settings.zk_tick_time
            self.sync_bound_source = f"2 * tickTime {self.settings.zk_tick_time:g}s, --zk-tick-time"
            return self.sync_bound
        member = member_of(conn.client)
        srvr = self._four_letter(conn, "srvr")
        if srvr is None:
            log.info("ZooKeeper %s does not answer `srvr`; trying again", member)
            return None
        mode = re.search(r"^Mode: *(\S+)", srvr, re.MULTILINE)
        if mode is not None and mode[1] == "standalone":
            self.sync_bound, self.sync_bound_source = 0.0, "standalone"
            return 0.0
        conf = self._four_letter(conn, "conf") if mode is not None else ""
        if conf is None:
            log.info("ZooKeeper %s does not answer `conf`; trying again", member)
            return None
        tick = re.search(r"^tickTime=(\d+)\s*$", conf, re.MULTILINE)
        if (mode is None or tick is None) and "whitelist" not in srvr + conf:
            # "This ZooKeeper instance is not currently serving requests": between leaders.
            log.info("ZooKeeper %s does not serve now; trying again", member)
            return None
        if mode is None or tick is None:
            asked = "conf" if mode is not None else "srvr"
            raise UsageError(
                f"cannot learn the tickTime of the ZooKeeper server {member} (its `{asked}` "
                "four-letter word is not in 4lw.commands.whitelist), which leaderrun needs on "
                "an ensemble; allow srvr and conf there, or give --zk-tick-time (the servers' "
                "tickTime, e.g. 2s for tickTime=2000)"
            )
        self.sync_bound = 2 * int(tick[1]) / 1000
        self.sync_bound_source = f"2 * tickTime {tick[1]}ms, from {member}'s conf"
        log.debug("ZooKeeper %s is a %s; %s", member, mode[1], self.sync_bound_source)
        return self.sync_bound

    def _four_letter(self, conn: Connection, command: str, attempts: int = 1) -> str | None:
        """A four-letter word's answer from the member `conn` is connected to (over TLS for
        zks://, as kazoo's `command` does), or None if it did not answer."""
        client = conn.client
        sock: Any = getattr(getattr(client, "_connection", None), "_socket", None)
        try:
            peer = sock.getpeername()[:2]
        except (AttributeError, OSError, ValueError):
            return None
        hostname = getattr(sock, "server_hostname", None) or peer[0]
        timeout = member_timeout(self.settings)
        for _ in range(attempts):
            chunks: list[bytes] = []
            try:
                with create_tcp_connection(
                    socket,
                    peer,
                    hostname=hostname,
                    timeout=timeout,
                    use_ssl=client.use_ssl,
                    ca=client.ca,
                    certfile=client.certfile,
                    keyfile=client.keyfile,
                    keyfile_password=client.keyfile_password,
                    verify_certs=client.verify_certs,
                    check_hostname=client.check_hostname,
                ) as four:
                    four.settimeout(timeout)
                    four.sendall(command.encode())
                    while chunk := four.recv(65536):
                        chunks.append(chunk)
            except (OSError, KazooTimeoutError):
                continue
            answer = b"".join(chunks).decode("utf-8", "replace")
            if answer:
                return answer
        return None

    def _create_node(self, term: ZkTerm, value: bytes, ends: tuple[Flag, ...]) -> bool:
        """Create the term's ephemeral sequential node; False if the term ended first.

        A create may succeed on the server while its answer is lost (or land later, sent by
        kazoo after a reconnection): the term's prefix lets us find it again, as kazoo's
        `Lock._find_node` does, instead of queueing twice. Every node with the prefix is in
        the term's session, or the term is lost: kazoo sends requests only in the session it
        holds, and a new session ends the term.
        """
        base = f"{self.queue_node}/{term.prefix}"
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
                self._rpc(client, lambda c: c.ensure_path_async(self.queue_node), ends=ends)
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
            term.client, lambda c: c.get_children_async(self.queue_node), ends=ends
        )
        mine = [c for c in contenders(children) if c.name.startswith(term.prefix)]
        return f"{self.queue_node}/{mine[0].name}" if mine else None

    def _wait_until_first(self, term: ZkTerm, ends: tuple[Flag, ...]) -> int | None:
        """Block until the term's node is first in the queue: its czxid; None when the term
        ended (our node vanished or is not in the term's session).

        Under `--max-holders` the queue is the semaphore's lock queue, and its first then
        waits for a lease (`_take_lease`)."""
        client = term.client
        ahead_seen: str | None = None
        while True:
            children = self._rpc(client, lambda c: c.get_children_async(self.queue_node), ends=ends)
            queue_now = contenders(children)
            mine = [c for c in queue_now if c.name.startswith(term.prefix)]
            if not mine:
                term.lose(f"our candidate node {term.node} vanished")
                return None
            ours = mine[0]
            node = f"{self.queue_node}/{ours.name}"
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
            if stale and sum(
                self._delete_stale(client, f"{self.queue_node}/{c.name}", ends) for c in stale
            ):
                continue
            ahead = [c for c in queue_now if c.sequence < ours.sequence]
            if not ahead:
                if self.queue_node != self.election_node:
                    return self._take_lease(term, node, ends)
                # An N > 1 candidate's lease, made meanwhile next to our queue: not ours to
                # hold alongside (`_check_election` saw none before we queued).
                self._check_values(client, self.election_node, leases_among(children), ends)
                return self._first(term, node, ends)
            predecessor = f"{self.queue_node}/{ahead[-1].name}"
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
                if self.queue_node != self.election_node:
                    # Each waiter checks the one just ahead of it: any two values of N in
                    # the queue are next to each other somewhere, and the later one leaves.
                    check_max_holders(self.settings, [Candidate(predecessor, 0, bytes(data))])
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
        # An answer in the term's session; on an ensemble only the renew thread moves the clock
        # (`_vouched`): this member may be a follower cut off from the ensemble leader.
        if client_id is not None and client_id[0] == term.session_id and not term.sync_bound:
            term.clock.acked(sent, term.clock.ttl)
        return int(stat.czxid)

    # -- the election under --max-holders N > 1: kazoo's Semaphore -----------------------------

    def _check_election(self, client: KazooClient, ends: tuple[Flag, ...]) -> None:
        """Refuse, before writing anything, an election whose candidates run with another
        `--max-holders` (UsageError): the election node's children (an N = 1 queue, or the
        leases) and the semaphore's lock queue. With N = 1 our own queue is not read: its
        candidates are of our kind, or foreign."""
        for parent in (self.election_node, self.lock_node):
            try:
                children = self._rpc(
                    client,
                    lambda c, p=parent: c.get_children_async(p),  # type: ignore[misc]
                    ends=ends,
                )
            except NoNodeError:
                continue
            if self.settings.max_holders == 1 and parent == self.election_node:
                children = leases_among(children)
            self._check_values(client, parent, children, ends)

    def _check_values(
        self, client: KazooClient, parent: str, names: list[str], ends: tuple[Flag, ...]
    ) -> None:
        """`check_max_holders` on the values of `parent`'s children `names`."""
        found = self._nodes(client, parent, names, ends)
        check_max_holders(self.settings, [Candidate(f"{parent}/{n}", 0, d) for n, d, _ in found])

    def _nodes(
        self, client: KazooClient, parent: str, names: list[str], ends: tuple[Flag, ...]
    ) -> list[tuple[str, bytes, Any]]:
        """(name, data, stat) of each of `parent`'s children `names` that still exists."""
        found = []
        for name in names:
            try:
                data, stat = self._rpc(
                    client,
                    lambda c, p=f"{parent}/{name}": c.get_async(p),  # type: ignore[misc]
                    ends=ends,
                )
            except NoNodeError:
                continue
            found.append((name, bytes(data or b""), stat))
        return found

    def _take_lease(self, term: ZkTerm, lock_node: str, ends: tuple[Flag, ...]) -> int | None:
        """Our lock node is first in the semaphore's lock queue: wait until fewer than N
        leases exist (only the lock's holder watches the leases), then take the lowest slot no
        lease has: create our lease node and delete our lock node in one transaction, which
        wakes the next waiter at once. Our token is the lease node's czxid; None when the term
        ended. Being the lock's holder, no other leaderrun candidate picks a slot meanwhile."""
        client = term.client
        holders = self.settings.max_holders
        name = term.prefix[: -len(NODE_MARK)]  # kazoo's Semaphore: `<path>/<uuid hex>`
        lease = f"{self.election_node}/{name}"
        seen: str | None = None
        while True:
            wake = threading.Event()
            try:
                names = self._rpc(
                    client,
                    lambda c, woken=wake: c.get_children_async(  # type: ignore[misc]
                        self.election_node, watch=wake_on(woken)
                    ),
                    ends=ends,
                )
            except NoNodeError:  # someone removed the election node: make it again
                self._rpc(client, lambda c: c.ensure_path_async(self.election_node), ends=ends)
                continue
            leases = self._nodes(client, self.election_node, names, ends)
            mine = [(data, stat) for n, data, stat in leases if n == name]
            if mine:  # a transaction whose answer was lost went through after all
                term.slot = int_field(mine[0][0], "slot") or 0
                term.node = term.key = lease
                term.renew_now.set()
                return self._first(term, lease, ends)
            if term.node is None:  # the transaction did not happen: our lock node it is again
                term.node = term.key = lock_node
                term.renew_now.set()
            check_max_holders(
                self.settings,
                [Candidate(f"{self.election_node}/{n}", 0, data) for n, data, _ in leases],
            )
            now = time.monotonic()
            stale = [n for n, _, _ in leases if self._leftovers.get(n + NODE_MARK, 0.0) > now]
            if stale and sum(
                self._delete_stale(client, f"{self.election_node}/{n}", ends) for n in stale
            ):
                continue
            if len(names) < holders:
                taken = {int_field(data, "slot") for _, data, _ in leases}
                slot = min(set(range(holders)) - taken)
                done = self._commit_lease(
                    term, lock_node, lease, with_fields(term.value, slot=slot), ends
                )
                if done is None:
                    return None
                if done:
                    term.slot = slot
                    # An N = 1 candidate may have queued in the election node after we read
                    # it: seen now, before either runs (it checks the leases once first).
                    after = self._rpc(
                        client, lambda c: c.get_children_async(self.election_node), ends=ends
                    )
                    queued = [c.name for c in contenders(after)]
                    self._check_values(client, self.election_node, queued, ends)
                    return self._first(term, lease, ends)
                continue
            if leases:
                oldest, data, stat = min(leases, key=lambda entry: entry[2].czxid)
                if oldest != seen:
                    seen = oldest
                    path = f"{self.election_node}/{oldest}"
                    self.on_waiting(Candidate(path, int(stat.czxid), data))
            with woken_by(wake, *self._ends(*ends)):
                wake.wait()

    def _commit_lease(
        self, term: ZkTerm, lock_node: str, lease: str, data: bytes, ends: tuple[Flag, ...]
    ) -> bool | None:
        """Create our lease node and delete our lock node, in one transaction. True when done;
        False when not (look again; `term.node` is None while we cannot tell); None when our
        lock node is gone (the term is lost).

        While the two swap, the term's node is None: the renew thread must not take our lock
        node's deletion for the end of the term, nor our lease's absence before it."""
        term.node = None

        def commit(client: KazooClient) -> Any:
            transaction = client.transaction()
            transaction.create(lease, data, ephemeral=True)
            transaction.delete(lock_node)
            return transaction.commit_async()

        try:
            results = self._rpc(term.client, commit, ends=ends, attempts=1)
        except BackendUnreachable:
            return False  # it may have happened: the next look tells
        except BaseException:
            term.node = term.key = lock_node
            raise
        failures = [result for result in results if isinstance(result, Exception)]
        if not failures:
            term.node = term.key = lease
            term.renew_now.set()  # the renew thread watches our lease from now on
            return True
        for failure in failures:
            self._raise_if_refused(failure)
        if isinstance(results[1], NoNodeError):
            term.lose(f"our candidate node {lock_node} vanished")
            return None
        return False  # the election node was removed, or our lease is there: look again

    def _delete_stale(self, client: KazooClient, path: str, ends: tuple[Flag, ...]) -> bool:
        """Delete a leftover node of ours (a candidate or lease node of an earlier term that
        outlived it); True once it is gone."""
        log.debug("removing a leftover node of ours: %s", path)
        try:
            self._rpc(client, lambda c: c.delete_async(path), ends=ends, attempts=1)
        except NoNodeError:
            return True
        except (BackendUnreachable, KazooException) as exc:
            log.debug("could not remove %s: %s", path, describe(exc))
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
        means we still lead; under `--max-holders`, our lease node) and the record is written,
        or nothing is."""
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

    # -- every run's outcome --------------------------------------------------------------------

    def record_outcome(
        self, election: str, token: int, record: bytes, cancel: Flag | None = None
    ) -> bool:
        """Compare-and-set on the node's data version (or its absence), through the
        backend's own connection (the term's session is closed by then; a new one is opened
        if need be, which the next term then takes). The node gets the elections' ACL
        (`--zk-auth-file`); `<prefix>/@last-run` is open, as `@step-down` is."""
        path = outcome_path(self.root, election)
        until = time.monotonic() + OUTCOME_TIMEOUT
        ends = (cancel,) if cancel is not None else ()
        conn = self.conn
        if conn is None or conn.stopped:
            self.connect(cancel)
            conn = self.conn
        assert conn is not None
        client = conn.client
        for _ in range(OUTCOME_ATTEMPTS):
            try:
                data, stat = self._rpc(client, lambda c: c.get_async(path), ends=ends, until=until)
            except NoNodeError:
                try:
                    self._rpc(
                        client,
                        lambda c: c.ensure_path_async(path.rsplit("/", 1)[0], acl=OPEN_ACL_UNSAFE),
                        ends=ends,
                        until=until,
                    )
                    self._rpc(
                        client,
                        lambda c: c.create_async(path, record, acl=acl_for(self.settings)),
                        ends=ends,
                        until=until,
                    )
                    return True
                except (NodeExistsError, NoNodeError):
                    continue  # created (or its parent removed) meanwhile: look again
            theirs = outcome_token(bytes(data or b""))
            if theirs is not None and theirs >= token:
                return False  # a newer term's outcome (or ours, written already)
            try:
                self._rpc(
                    client,
                    lambda c, version=stat.version: c.set_async(  # type: ignore[misc]
                        path, record, version=version
                    ),
                    ends=ends,
                    until=until,
                )
                return True
            except (BadVersionError, NoNodeError):
                continue  # changed meanwhile: look again
        return False

    # -- observing and steering -----------------------------------------------------------------

    def elections(self) -> list[str]:
        try:
            names = self._children(self.root)
        except NoNodeError:
            return []
        outcomes: set[str] = set()
        with suppress(NoNodeError):  # elections with only an outcome are elections too
            outcomes.update(self._children(f"{self.root}/{OUTCOME_DIR}"))
        found = []
        for name in sorted({*names, *outcomes}):
            if not ELECTION_NAME.fullmatch(name):
                continue  # the step-down requests' node, or something not ours
            if name in outcomes:
                found.append(name)
                continue
            if name.endswith(f"-{NODE_MARK}") and name[: -len(NODE_MARK) - 1] in names:
                continue  # the lock queue of a --max-holders election: its waiters
            try:
                children, stat = self._children(f"{self.root}/{name}", include_data=True)
            except NoNodeError:
                continue
            # Queued candidates (N = 1), or the leases of a --max-holders election.
            if children or stat.dataLength > 0:
                found.append(name)
        return found

    @contextmanager
    def changes(self, election: str) -> Iterator[Callable[[float], bool]]:
        """ZooKeeper watches fire once: before each of the caller's looks they are set again
        on the election's children (candidates, or holders' leases), the semaphore's queue
        and every child's data (an announced child pid), so nothing after is missed."""
        changed = threading.Event()
        path = f"{self.root}/{election}"

        def on_event(event: WatchedEvent) -> None:
            changed.set()

        def arm() -> None:
            for parent in (path, lock_node_of(path)):
                try:
                    children = self._read(
                        lambda c, p=parent: c.get_children_async(p, watch=on_event)  # type: ignore[misc]
                    )
                except NoNodeError:
                    self._read(lambda c, p=parent: c.exists_async(p, watch=on_event))  # type: ignore[misc]
                    continue
                for child in children:
                    with suppress(NoNodeError):
                        self._read(
                            lambda c, n=f"{parent}/{child}": c.get_async(n, watch=on_event)  # type: ignore[misc]
                        )

        def wait(until: float) -> bool:
            happened = changed.wait(max(0.0, until - time.monotonic()))
            changed.clear()
            if happened:
                arm()
            return happened

        arm()
        yield wait

    def view(self, election: str) -> ElectionView:
        path = f"{self.root}/{election}"
        try:
            request, _ = self._get(step_down_path(self.root, election))
        except NoNodeError:
            request = b""
        try:
            outcome, _ = self._get(outcome_path(self.root, election))
        except NoNodeError:
            outcome = b""
        try:
            record, _ = self._get(path)
            children = self._children(path)
        except NoNodeError:
            return ElectionView(election, (), step_down=request or None, outcome=outcome or None)
        waiting: list[Contender] = []
        if leases_among(children) or not children:
            with suppress(NoNodeError):
                waiting = contenders(self._children(lock_node_of(path)))
        if waiting or leases_among(children):
            return self._semaphore_view(election, children, waiting, record, request, outcome)
        candidates = self._view_nodes(path, [c.name for c in contenders(children)])
        return ElectionView(
            election,
            tuple(candidates),
            bytes(record) if record else None,
            step_down=request or None,
            outcome=outcome or None,
        )

    def _semaphore_view(
        self,
        election: str,
        children: list[str],
        waiting: list[Contender],
        record: bytes,
        request: bytes,
        outcome: bytes,
    ) -> ElectionView:
        """`view` of a `--max-holders` election: the holders (every lease node, as kazoo's
        `Semaphore` counts them, oldest first), then the waiters (the lock queue in order);
        N as the candidates say (else kazoo's own numeric node data, else the leases counted);
        the step-down requests by slot."""
        path = f"{self.root}/{election}"
        holders = sorted(self._view_nodes(path, children), key=lambda c: c.token)
        candidates = (*holders, *self._view_nodes(lock_node_of(path), [c.name for c in waiting]))
        kazoo_n = record.strip().isdigit()  # a Semaphore that kazoo made keeps N there
        if any(c.max_holders is not None for c in candidates):
            holding = election_holders(candidates)
        else:
            holding = int(record) if kazoo_n else max(1, len(holders))
        by_slot: dict[int, bytes] = {}
        mark = f"{election}@"
        with suppress(NoNodeError):
            for name in self._children(f"{self.root}/{STEP_DOWN_DIR}"):
                if not name.startswith(mark) or not name[len(mark) :].isdigit():
                    continue
                slot = int(name[len(mark) :])
                with suppress(NoNodeError):
                    data, _ = self._get(step_down_path(self.root, election, slot))
                    if data:
                        by_slot[slot] = data
        return ElectionView(
            election,
            candidates,
            record if record and not kazoo_n else None,
            step_down=request or None,
            max_holders=holding,
            step_downs=by_slot,
            outcome=outcome or None,
        )

    def _view_nodes(self, parent: str, names: list[str]) -> list[Candidate]:
        """The candidates at `parent`'s children `names` that still exist, in that order."""
        found = []
        for name in names:
            key = f"{parent}/{name}"
            try:
                data, stat = self._get(key)
            except NoNodeError:
                continue  # left while we looked
            found.append(Candidate(key, int(stat.czxid), bytes(data)))
        return found

    def request_step_down(self, election: str, leader: Candidate, request: bytes) -> bool:
        """One multi-op: the leader's node still exists (its path is unique to its candidacy,
        and a queued node stays first once first; under `--max-holders`, its lease node) and
        the request is written (at its slot's path), or nothing is."""
        path = step_down_path(self.root, election, leader.slot)
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

    def withdraw_step_down(self, election: str, request: bytes, slot: int | None = None) -> None:
        """Empty the request node if it still holds `request` (emptied, not deleted: it keeps
        the ACL the leader gave it)."""
        path = step_down_path(self.root, election, slot)
        try:
            data, stat = self._get(path)
        except NoNodeError:
            return
        if data != request:
            return
        with suppress(NoNodeError, BadVersionError):
            self._read(lambda c: c.set_async(path, b"", version=stat.version))

    def force_step_down(self, election: str, slot: int | None = None) -> Candidate | None:
        """Delete the leader's node; under `--max-holders`, the lease node of the holder of
        `slot` (the first holder when None), which ends its term and frees its slot."""
        held = [c for c in self.view(election).holders if slot is None or c.slot == slot]
        if not held:
            return None
        leader = held[0]
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


def member_of(client: KazooClient) -> str:
    """`host:port` of the member kazoo is connected to now, as listed in --backend (for logs)."""
    sock = getattr(getattr(client, "_connection", None), "_socket", None)
    try:
        host, port = sock.getpeername()[:2] if sock is not None else ("", 0)
    except (OSError, ValueError):
        return "unknown"
    if not host:
        return "unknown"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
