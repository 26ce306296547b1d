"""etcd v3 backend: etcd's own election recipe over the gRPC API (client: etcd-sdk-python).

Store layout, as etcd's `concurrency.Election` makes it (so `etcdctl elect --listen` sees our
leader): each candidate puts `<prefix>/<election>/<lease id in hex>` under its own lease; the
leader is the key with the lowest create revision, and that revision is the fencing token.
A waiter watches only the key just ahead of it for deletion.

Each candidacy is one `EtcdTerm`: its own lease, key, keep-alive thread and watch. Nothing of
a term lives on the backend object, so an old term's threads can only ever end their own term.

Nothing here sleeps to poll: waits are on watch callbacks, the keep-alive answer, or the
term's / campaign's `Flag`. Every request carries its own deadline (per thread, see
`DeadlineClient`), and retries are paced by a cancellable wait. Corrections the client needs
to survive a member restart (measured in the first wave):
- an endpoint that failed once is skipped for 300 s by default: we retry it after 0.2 s;
- gRPC's reconnect backoff grows to 120 s: we cap it at 0.5 s.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import grpc
import pyetcd
from pyetcd import etcdrpc
from pyetcd.client import Endpoint, EtcdTokenCallCredentials, MultiEndpointEtcd3Client

from leaderrun import metrics
from leaderrun.backends import (
    OUTCOME_ATTEMPTS,
    OUTCOME_DIR,
    OUTCOME_TIMEOUT,
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
from leaderrun.record import describe_requester, outcome_token, requested_token, with_fields
from leaderrun.settings import ELECTION_NAME, Settings

log = logging.getLogger(__name__)

ENDPOINT_RETRY = 0.2
#: Pause between attempts of a failed request (a cancellable wait, never a poll).
RETRY_INTERVAL = 0.25
GRPC_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.enable_retries", 0),
]
REFUSAL_CODES = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,  # etcd's "authentication failed, invalid user ID or password"
)
TLS_FAILURE_WORDS = ("handshake", "ssl", "certificate", "tls", "tsi_")
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    pyetcd.exceptions.Etcd3Exception,
    grpc.RpcError,
    ValueError,
)


def grpc_error(exc: BaseException | None) -> grpc.RpcError | None:
    """The gRPC error behind a client exception (etcd-sdk-python wraps some, keeping the
    original as the context), so messages can say what really happened."""
    while exc is not None:
        if isinstance(exc, grpc.RpcError):
            return exc
        exc = exc.__context__
    return None


def is_token_expired(exc: BaseException) -> bool:
    err = grpc_error(exc)
    return err is not None and "invalid auth token" in (err.details() or "")


def is_refusal(exc: BaseException) -> bool:
    err = grpc_error(exc)
    return err is not None and err.code() in REFUSAL_CODES and not is_token_expired(exc)


def is_lease_not_found(exc: BaseException) -> bool:
    err = grpc_error(exc)
    return err is not None and "requested lease not found" in (err.details() or "")


def is_tls_failure(exc: BaseException) -> bool:
    err = grpc_error(exc)
    details = (err.details() or "").lower() if err is not None else ""
    return any(word in details for word in TLS_FAILURE_WORDS)


def refusal_error(exc: BaseException) -> BackendRefused:
    """A wrong user or password is not a permissions problem: say which one it is."""
    err = grpc_error(exc)
    details = (err.details() or "").lower() if err is not None else ""
    if err is not None and (
        err.code() == grpc.StatusCode.UNAUTHENTICATED or "authentication failed" in details
    ):
        return BackendRefused(
            f"etcd refused the credentials ({describe(exc)}); check --user and the password "
            "in --password-file or LEADERRUN_PASSWORD"
        )
    return BackendRefused(
        f"etcd refused the request ({describe(exc)}); check the permissions of --user's role "
        "on the prefix"
    )


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as handle:
        return handle.read()


class DeadlineClient(MultiEndpointEtcd3Client):  # type: ignore[misc]
    """The client, with a request timeout of each thread's own.

    etcd-sdk-python reads `self.timeout` for every request; the keep-alive thread, the watch
    thread and the supervisor's requests each need their own bound, so the attribute is
    thread-local (`deadline()` sets it for the calling thread only).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._local = threading.local()
        self._default_timeout: float | None = None
        super().__init__(*args, **kwargs)

    @property
    def timeout(self) -> float | None:
        return getattr(self._local, "timeout", self._default_timeout)

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._default_timeout = value

    @contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        previous = getattr(self._local, "timeout", None)
        self._local.timeout = max(0.05, seconds)
        try:
            yield
        finally:
            self._local.timeout = previous


def make_client(settings: Settings, rpc_timeout: float) -> DeadlineClient:
    """A client with the corrections of the module docstring, and TLS if asked."""
    security = settings.security
    secure = security.wants_tls(settings.backend.scheme)
    creds = (
        grpc.ssl_channel_credentials(
            root_certificates=_read(security.cacert),
            private_key=_read(security.key),
            certificate_chain=_read(security.cert),
        )
        if secure
        else None
    )
    endpoints = [
        Endpoint(
            ep.host,
            ep.port,
            secure=secure,
            creds=creds,
            time_retry=ENDPOINT_RETRY,
            opts=GRPC_OPTIONS,
        )
        for ep in settings.backend.endpoints
    ]
    return DeadlineClient(endpoints=endpoints, timeout=rpc_timeout, failover=True)


@dataclass
class EtcdTerm(Term):
    """A term on etcd: its lease is its life (the key goes with it)."""

    lease_id: int = 0
    threads: list[threading.Thread] = field(default_factory=list, repr=False)


class WatchedKey:
    """A watch for the deletion of one key after a revision; wakes `woken` on delete or when
    the watch breaks (then `broken`). Callbacks run on the client's watch thread."""

    def __init__(self, woken: threading.Event, any_change: bool = False) -> None:
        self.woken = woken
        self.any_change = any_change
        self.deleted = False
        self.changed = False
        self.broken = False

    def __call__(self, response: Any) -> None:
        if not isinstance(response, pyetcd.watch.WatchResponse):
            self.broken = True
        elif any(isinstance(e, pyetcd.events.DeleteEvent) for e in response.events):
            self.deleted = self.changed = True
        elif self.any_change and response.events:
            self.changed = True
        else:
            return
        self.woken.set()


class EtcdBackend(Backend):
    """One etcd client; each candidacy is an `EtcdTerm` of its own."""

    schemes = ("etcd", "etcds")

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        timing = settings.timing
        self.rpc_timeout = max(0.5, min(2.0, timing.renew_interval))
        self.client = make_client(settings, self.rpc_timeout)
        self.key_prefix = settings.election_path + "/"
        #: How long requests may fail before an operator hears about it.
        self._patience = max(5.0, timing.ttl / 2)
        self.closed = Flag()
        self._unrevoked: list[int] = []

    # -- the request layer --------------------------------------------------------------------

    def _call(
        self,
        request: Callable[[], Any],
        *,
        cancel: Flag | None = None,
        until: float | None = None,
        attempts: int | None = None,
    ) -> Any:
        """One request, retried through a blip. Each attempt is bounded by the RPC timeout and
        `until` (monotonic); between attempts the wait ends at once when `cancel` is set.

        Refusals are final (BackendRefused, exit 77); running out of time or attempts raises
        BackendUnreachable, a set `cancel` raises Cancelled.
        """
        tries, first_failure, warned = 0, 0.0, False
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            bound = self.rpc_timeout if until is None else until - time.monotonic()
            try:
                with self.client.deadline(min(self.rpc_timeout, bound)):
                    return request()
            except TRANSIENT_ERRORS as exc:
                if is_refusal(exc):
                    raise refusal_error(exc) from None
                self._recover(exc)
                tries += 1
                left = None if until is None else until - time.monotonic()
                if (left is not None and left <= 0) or (attempts is not None and tries >= attempts):
                    raise BackendUnreachable(f"etcd did not answer ({describe(exc)})") from exc
                if tries == 1:
                    first_failure = time.monotonic()
                elif not warned and time.monotonic() - first_failure >= self._patience:
                    # A blip the timing rule absorbs is not worth a line; an outage is.
                    warned = True
                    log.warning("etcd is not answering (%s); still trying", describe(exc))
                pause = RETRY_INTERVAL if left is None else min(RETRY_INTERVAL, left)
                if (cancel or self.closed).sleep(pause) and cancel is not None:
                    raise Cancelled() from None

    def _recover(self, exc: BaseException) -> None:
        """After a failed request: count it, and log in again if our token expired."""
        metrics.backend_error(self.settings.election)
        if is_token_expired(exc):
            log.info("etcd auth token expired; logging in again")
            with suppress(*TRANSIENT_ERRORS):
                self._authenticate()

    # -- connection ---------------------------------------------------------------------------

    def connect(self, cancel: Flag | None = None) -> None:
        until = time.monotonic() + self.settings.connect_timeout

        def probe() -> None:
            self._authenticate()
            self.client.get(self.key_prefix)

        try:
            self._call(probe, cancel=cancel, until=until)
        except BackendUnreachable as exc:
            cause = exc.__cause__
            if cause is not None and is_tls_failure(cause):
                raise BackendRefused(
                    f"TLS with etcd at {self.settings.backend} failed ({describe(cause)}); "
                    "check --cacert, --cert and --key"
                ) from None
            raise BackendUnreachable(
                f"cannot reach etcd at {self.settings.backend} within "
                f"{self.settings.connect_timeout:g}s ({describe(cause)}); "
                "check --backend and that etcd is running"
            ) from None

    def _authenticate(self) -> None:
        """Log in with --user: etcd hands out a token that every later request carries.

        The token goes in the request metadata, and also as gRPC call credentials on TLS
        channels; call credentials alone are refused by gRPC on a plain channel ("insufficient
        security level"), which is why the client's own login is not used.
        """
        security = self.settings.security
        if not security.user:
            return
        request = etcdrpc.AuthenticateRequest(name=security.user, password=security.password)
        token = self.client.authstub.Authenticate(request, self.client.timeout).token
        self.client.metadata = (("token", token),)
        if security.wants_tls(self.settings.backend.scheme):
            self.client.call_credentials = grpc.metadata_call_credentials(
                EtcdTokenCallCredentials(token)
            )
        self.client._clear_old_stubs()  # the watcher captured the old token

    def close(self) -> None:
        self.closed.set()
        self.client.close()

    # -- a term: lease, key, keep-alive -------------------------------------------------------

    def _new_term(self, cancel: Flag) -> EtcdTerm:
        """Grant a fresh lease and keep it alive from now on (waiting can take long)."""
        self._revoke_leftover_leases()
        requested = max(1, math.ceil(self.settings.timing.ttl))
        sent = time.monotonic()
        lease = self._call(lambda: self.client.lease(requested), cancel=cancel)
        granted = float(lease.ttl)
        if granted != requested:
            log.info("etcd granted a TTL of %gs (asked %ds)", granted, requested)
            try:
                self.settings.timing.with_granted_ttl(granted).check("TTL etcd granted")
            except Exception:
                self._revoke(lease.id)
                raise
        clock = LeaseClock(
            ttl=granted,
            last_ack=sent,
            election=self.settings.election,
            listener=self.on_term_change,
        )
        term = EtcdTerm(
            key=f"{self.key_prefix}{lease.id:x}",
            clock=clock,
            handle={"lease": lease.id},
            lease_id=lease.id,
        )
        self._start(term, "keepalive", self._keep_alive)
        self.on_queued(term)
        return term

    def _keep_alive(self, term: EtcdTerm) -> None:
        """Renew every renew interval (a timer, the renewal's own period) until the term ends."""
        failing_since: float | None = None
        while not term.lost.is_set() and not self.closed.is_set():
            sent = time.monotonic()
            try:
                with self.client.deadline(self.rpc_timeout):
                    responses = list(self.client.refresh_lease(term.lease_id))
                ttl = responses[0].TTL if responses else 0
            except TRANSIENT_ERRORS as exc:
                self._recover(exc)
                if failing_since is None:
                    failing_since = sent
                    log.debug("lease keep-alive failed: %s", describe(exc))
                term.lost.sleep(RETRY_INTERVAL)
                continue
            if ttl <= 0:
                term.lose("the lease expired on the etcd server")
                return
            term.clock.acked(sent, float(ttl))
            if failing_since is not None:
                log.info("lease keep-alive answered again after %.1fs", sent - failing_since)
                failing_since = None
            term.lost.sleep(self.settings.timing.renew_interval)

    def _start(self, term: EtcdTerm, name: str, target: Callable[[EtcdTerm], None]) -> None:
        thread = threading.Thread(
            target=target, args=(term,), name=f"{name}-{term.lease_id:x}", daemon=True
        )
        term.threads.append(thread)
        thread.start()

    # -- the election -------------------------------------------------------------------------

    def campaign(self, value: bytes, cancel: Flag) -> EtcdTerm | None:
        try:
            self._check_queue(cancel)
        except Cancelled:
            return None
        while not cancel.is_set():
            try:
                term = self._new_term(cancel)
            except Cancelled:
                return None
            try:
                # The key carries this term's own lease: if the lease is gone, etcd refuses
                # the put, so a key no lease holds can never be written.
                self._call(
                    lambda t=term: self.client.put(t.key, value, lease=t.lease_id),  # type: ignore[misc]
                    cancel=cancel,
                )
                token = self._wait_until_first(term, value, cancel)
            except Cancelled:
                token = None
            except BackendUnreachable as exc:
                if not is_lease_not_found(exc.__cause__ or exc):
                    self._withdraw(term)
                    raise
                token = None
            except UsageError:  # a candidate with another --max-holders queued ahead meanwhile
                self._withdraw(term)
                raise
            if token is not None:
                term.token = token
                self._start(term, "leader-watch", self._watch_own_key)
                self._start(term, "step-down-watch", self._watch_step_down)
                return term
            self._withdraw(term)
        return None

    def _withdraw(self, term: EtcdTerm) -> None:
        """Leave the queue without waiting long: a store that does not answer lets it expire."""
        term.lose("withdrawn")
        self._revoke(term.lease_id, until=time.monotonic() + self.rpc_timeout)

    def _queue(self, cancel: Flag | None = None) -> list[tuple[Any, Any]]:
        """The election's candidate keys with their values, oldest first."""
        return list(
            self._call(
                lambda: list(
                    self.client.get_prefix(
                        self.key_prefix, sort_order="ascend", sort_target="create"
                    )
                ),
                cancel=cancel,
            )
        )

    def _check_queue(self, cancel: Flag) -> None:
        """Refuse, before writing anything, an election whose candidates use another N."""
        queue = self._queue(cancel)
        check_max_holders(
            self.settings, (Candidate(m.key.decode(), 0, bytes(v)) for v, m in queue)
        )

    def _wait_until_first(self, term: EtcdTerm, value: bytes, cancel: Flag) -> int | None:
        """Block until our key is among the `--max-holders` lowest create revisions; its
        revision, or None when our lease or key vanished while waiting (the caller then
        queues again with a new term).

        Who watches what (no thundering herd): with N = 1 a waiter watches the key just
        ahead of it for deletion. With N > 1 the first waiter watches the election for any
        deletion (a holder leaving frees a slot), and every later waiter watches the key just
        ahead of it for any change: that key either leaves or, becoming a holder, writes its
        slot (`_claim_slot`), which wakes the next one in turn.
        """
        holders = self.settings.max_holders
        ahead_key: str | None = None
        while not term.lost.is_set():
            queue_now = self._queue(cancel)
            mine = [meta for _, meta in queue_now if meta.key.decode() == term.key]
            if not mine:
                log.warning("our candidate key %s vanished while waiting; queueing again", term.key)
                return None
            token = int(mine[0].create_revision)
            ahead = [(v, meta) for v, meta in queue_now if meta.create_revision < token]
            check_max_holders(
                self.settings, (Candidate(m.key.decode(), 0, bytes(v)) for v, m in ahead)
            )
            if len(ahead) < holders:
                if holders > 1:
                    term.token = token
                    return token if self._claim_slot(term, value, cancel) else None
                return token
            value_ahead, meta = ahead[-1]
            key = meta.key.decode()
            if key != ahead_key:
                ahead_key = key
                self.on_waiting(Candidate(key, int(meta.create_revision), bytes(value_ahead)))
            seen = meta.response_header.revision
            if holders == 1:
                self._wait_deleted(key, seen, cancel, term.lost)
            elif len(ahead) == holders:
                self._wait_deleted(self.key_prefix, seen, cancel, term.lost, prefix=True)
            else:
                self._wait_deleted(key, seen, cancel, term.lost, any_change=True)
        return None

    def _claim_slot(self, term: EtcdTerm, value: bytes, cancel: Flag) -> bool:
        """Take the lowest slot no other holder has, by writing it into our value.

        Two holders promoted at once could pick the same slot: the write is a transaction on
        the other holders' mod revisions as read, so of two concurrent claims one fails (the
        other's write changed a revision it compared) and reads again. False when our key is
        gone (the term ended)."""
        txn = self.client.transactions
        holders = self.settings.max_holders
        while not term.lost.is_set():
            queue_now = self._queue(cancel)
            keys = [meta.key.decode() for _, meta in queue_now[:holders]]
            if term.key not in keys:
                return False
            others = [(v, m) for v, m in queue_now[:holders] if m.key.decode() != term.key]
            taken = {Candidate(m.key.decode(), 0, bytes(v)).slot for v, m in others}
            term.slot = min(set(range(holders)) - taken)
            claimed = with_fields(value, slot=term.slot)
            compare = [txn.create(term.key) == term.token] + [
                txn.mod(m.key.decode()) == m.mod_revision for _, m in others
            ]
            succeeded, _ = self._call(
                lambda c=compare, v=claimed: self.client.transaction(  # type: ignore[misc]
                    compare=c, success=[txn.put(term.key, v, lease=term.lease_id)], failure=[]
                ),
                cancel=cancel,
            )
            if succeeded:
                return True
        return False

    def _wait_deleted(
        self,
        key: str,
        seen_revision: int,
        *ends: Flag,
        any_change: bool = False,
        prefix: bool = False,
    ) -> bool:
        """Wait for a DELETE of `key` (with `any_change`, any change; with `prefix`, of any key
        under it) after `seen_revision` (so no event between the read and the watch is
        missed), or until one of `ends` is set. True when it happened; a broken watch returns
        False after a short cancellable pause (the caller reads again)."""
        woken = threading.Event()
        watch = WatchedKey(woken, any_change)
        add = self.client.add_watch_prefix_callback if prefix else self.client.add_watch_callback
        try:
            watch_id = self._call(
                lambda: add(key, watch, start_revision=seen_revision + 1),
                cancel=ends[0],
            )
        except BackendUnreachable:
            return False
        try:
            with woken_by(woken, *ends, self.closed):
                woken.wait()
            if watch.broken:
                ends[0].sleep(RETRY_INTERVAL)
            return watch.changed if any_change else watch.deleted
        finally:
            with suppress(*TRANSIENT_ERRORS), self.client.deadline(self.rpc_timeout):
                self.client.cancel_watch(watch_id)

    def _watch_own_key(self, term: EtcdTerm) -> None:
        """Lose leadership as soon as our key is gone (step-down, `etcdctl del`, expiry)."""
        while not term.lost.is_set() and not self.closed.is_set():
            try:
                _, meta = self._call(lambda: self.client.get(term.key), cancel=term.lost)
            except (Cancelled, BackendUnreachable):
                continue
            if meta is None or meta.create_revision != term.token:
                term.lose(f"our leader key {term.key} was deleted")
                return
            try:
                deleted = self._wait_deleted(term.key, meta.response_header.revision, term.lost)
            except Cancelled:
                return
            if deleted:
                term.lose(f"our leader key {term.key} was deleted")
                return

    def _watch_step_down(self, term: EtcdTerm) -> None:
        """Hand over when `step-down` asks this term to; clean up a request for another term."""
        path = self.own_step_down_path(term)
        while not term.lost.is_set() and not self.closed.is_set():
            try:
                request, meta = self._call(lambda: self.client.get(path), cancel=term.lost)
            except (Cancelled, BackendUnreachable):
                return
            if request is not None:
                asked = requested_token(bytes(request))
                if asked == term.token:
                    term.ask_handover(describe_requester(bytes(request)))
                    return
                if asked is None or asked < term.token:  # for an ended term: ignored
                    self._delete_if_unchanged(path, meta.mod_revision)
            revision = meta.response_header.revision if meta is not None else self._revision()
            if revision is None:
                term.lost.sleep(RETRY_INTERVAL)
                continue
            with suppress(Cancelled):
                self._wait_deleted(path, revision, term.lost, any_change=True)

    def _revision(self) -> int | None:
        """The store's current revision (a watch started after it misses nothing)."""
        try:
            _, meta = self._call(lambda: self.client.get(self.key_prefix), attempts=3)
        except BackendUnreachable:
            return None
        return None if meta is None else int(meta.response_header.revision)

    def _delete_if_unchanged(self, key: str, mod_revision: int) -> None:
        txn = self.client.transactions
        with suppress(BackendUnreachable):
            self._call(
                lambda: self.client.transaction(
                    compare=[txn.mod(key) == mod_revision], success=[txn.delete(key)], failure=[]
                ),
                attempts=3,
            )

    # -- leaving ------------------------------------------------------------------------------

    def resign(self, term: Term) -> bool:
        """Revoke the lease: the key goes with it and the next waiter is woken at once."""
        assert isinstance(term, EtcdTerm)
        term.lose("resigned")
        term.released = self._revoke(term.lease_id)
        return term.released

    def _revoke(self, lease_id: int, until: float | None = None) -> bool:
        """True once etcd confirmed the lease is gone; else it expires by itself within its
        TTL and is revoked again before our next candidacy."""
        try:
            self._call(
                lambda: self.client.revoke_lease(lease_id),
                until=until if until is not None else time.monotonic() + 2 * self.rpc_timeout,
            )
            return True
        except BackendUnreachable as exc:
            if is_lease_not_found(exc.__cause__ or exc):
                return True  # expired already: that is released too
            self._unrevoked.append(lease_id)
            log.warning(
                "could not revoke lease %x (%s); it expires on its own within %gs",
                lease_id,
                describe(exc.__cause__),
                self.settings.timing.ttl,
            )
            return False

    def _revoke_leftover_leases(self) -> None:
        """Revoke leases we failed to revoke earlier (store down), so that under --forever our
        own stale key cannot stand ahead of our new candidacy until it expires."""
        leftovers, self._unrevoked = self._unrevoked, []
        for lease_id in leftovers:
            with suppress(*TRANSIENT_ERRORS), self.client.deadline(self.rpc_timeout):
                self.client.revoke_lease(lease_id)
                log.debug("revoked leftover lease %x", lease_id)

    @classmethod
    def release_orphaned(cls, settings: Settings, handle: Mapping[str, Any]) -> None:
        backend = cls(settings)
        try:
            backend.connect()
            backend._call(
                lambda: backend.client.revoke_lease(int(handle["lease"])),
                until=time.monotonic() + settings.connect_timeout,
            )
        finally:
            backend.close()

    def announce(self, term: Term, value: bytes) -> None:
        assert isinstance(term, EtcdTerm)
        txn = self.client.transactions
        with suppress(Cancelled):  # an ended term writes nothing
            self._call(
                lambda: self.client.transaction(
                    compare=[txn.create(term.key) == term.token],
                    success=[txn.put(term.key, value, lease=term.lease_id)],
                    failure=[],
                ),
                attempts=3,
                cancel=term.lost,
            )

    # -- last-run record ------------------------------------------------------------------------

    def last_run(self) -> bytes | None:
        value, _ = self._call(lambda: self.client.get(self.settings.election_path), attempts=8)
        return bytes(value) if value is not None else None

    def record_run(self, term: Term, record: bytes) -> bool:
        txn = self.client.transactions
        succeeded, _ = self._call(
            lambda: self.client.transaction(
                compare=[txn.create(term.key) == term.token],
                success=[txn.put(self.settings.election_path, record)],
                failure=[],
            ),
            attempts=8,
        )
        return bool(succeeded)

    # -- every run's outcome --------------------------------------------------------------------

    def record_outcome(
        self, election: str, token: int, record: bytes, cancel: Flag | None = None
    ) -> bool:
        """Compare-and-set on the key's mod revision (or its absence)."""
        path = outcome_path(self.settings.prefix, election)
        until = time.monotonic() + OUTCOME_TIMEOUT
        txn = self.client.transactions
        for _ in range(OUTCOME_ATTEMPTS):
            stored, meta = self._call(lambda: self.client.get(path), cancel=cancel, until=until)
            theirs = outcome_token(bytes(stored)) if stored is not None else None
            if theirs is not None and theirs >= token:
                return False  # a newer term's outcome (or ours, written already)
            unchanged = (
                txn.version(path) == 0 if meta is None else txn.mod(path) == meta.mod_revision
            )
            succeeded, _ = self._call(
                lambda unchanged=unchanged: self.client.transaction(  # type: ignore[misc]
                    compare=[unchanged], success=[txn.put(path, record)], failure=[]
                ),
                cancel=cancel,
                until=until,
            )
            if succeeded:
                return True
        return False

    # -- observing and steering -----------------------------------------------------------------

    def elections(self) -> list[str]:
        root = self.settings.prefix + "/"
        found = self._call(lambda: list(self.client.get_prefix(root, keys_only=True)))
        names = set()
        for _, meta in found:
            parts = meta.key.decode("utf-8", "replace")[len(root) :].split("/")
            # An election with only an outcome (`<prefix>/@last-run/<election>`) is one too.
            names.add(parts[1] if parts[0] == OUTCOME_DIR and len(parts) > 1 else parts[0])
        return sorted(name for name in names if ELECTION_NAME.fullmatch(name))

    def view(self, election: str) -> ElectionView:
        path = f"{self.settings.prefix}/{election}"
        found = self._call(
            lambda: list(
                self.client.get_prefix(path + "/", sort_order="ascend", sort_target="create")
            )
        )
        candidates = [
            Candidate(meta.key.decode("utf-8", "replace"), int(meta.create_revision), bytes(value))
            for value, meta in found
        ]
        holders = election_holders(candidates)
        for index, (_, meta) in enumerate(found[:holders]):
            lease = meta.lease_id
            ttl = (
                self._call(lambda i=lease: self.client.get_lease_info(i)).TTL  # type: ignore[misc]
                if lease
                else None
            )
            held = candidates[index]
            candidates[index] = Candidate(held.key, held.token, held.value, ttl_left=ttl)
        record, _ = self._call(lambda: self.client.get(path))
        outcome, _ = self._call(
            lambda: self.client.get(outcome_path(self.settings.prefix, election))
        )
        request, _ = self._call(
            lambda: self.client.get(step_down_path(self.settings.prefix, election))
        )
        by_slot: dict[int, bytes] = {}
        if holders > 1:
            slot_prefix = step_down_path(self.settings.prefix, election) + "@"
            for value, meta in self._call(lambda: list(self.client.get_prefix(slot_prefix))):
                slot = meta.key.decode()[len(slot_prefix) :]
                if slot.isdigit():
                    by_slot[int(slot)] = bytes(value)
        return ElectionView(
            election,
            tuple(candidates),
            bytes(record) if record else None,
            step_down=bytes(request) if request else None,
            max_holders=holders,
            step_downs=by_slot,
            outcome=bytes(outcome) if outcome else None,
        )

    @contextmanager
    def changes(self, election: str) -> Iterator[Callable[[float], bool]]:
        """One watch on the election's candidate keys (joins, leaves, announced values),
        established before the caller's first look, so nothing between is missed."""
        changed = threading.Event()

        def on_event(response: Any) -> None:
            changed.set()  # an event, or a broken watch: look again either way

        prefix = f"{self.settings.prefix}/{election}/"
        watch_id = self._call(lambda: self.client.add_watch_prefix_callback(prefix, on_event))

        def wait(until: float) -> bool:
            happened = changed.wait(max(0.0, until - time.monotonic()))
            changed.clear()
            return happened

        try:
            yield wait
        finally:
            with suppress(*TRANSIENT_ERRORS), self.client.deadline(self.rpc_timeout):
                self.client.cancel_watch(watch_id)

    def request_step_down(self, election: str, leader: Candidate, request: bytes) -> bool:
        txn = self.client.transactions
        path = step_down_path(self.settings.prefix, election, leader.slot)
        succeeded, _ = self._call(
            lambda: self.client.transaction(
                compare=[txn.create(leader.key) == leader.token],
                success=[txn.put(path, request)],
                failure=[],
            )
        )
        return bool(succeeded)

    def withdraw_step_down(self, election: str, request: bytes, slot: int | None = None) -> None:
        txn = self.client.transactions
        path = step_down_path(self.settings.prefix, election, slot)
        self._call(
            lambda: self.client.transaction(
                compare=[txn.value(path) == request], success=[txn.delete(path)], failure=[]
            )
        )

    def force_step_down(self, election: str, slot: int | None = None) -> Candidate | None:
        view = self.view(election)
        held = [c for c in view.holders if slot is None or c.slot == slot]
        if not held:
            return None
        leader = held[0]
        txn = self.client.transactions
        self._call(
            lambda: self.client.transaction(
                compare=[txn.create(leader.key) == leader.token],
                success=[txn.delete(leader.key)],
                failure=[],
            )
        )
        return leader


def describe(exc: BaseException | None) -> str:
    """A short, secret-free description of a client error for one-line messages."""
    if exc is None:
        return "no answer"
    err = grpc_error(exc)
    if err is not None:
        return f"{err.code().name}: {err.details()}"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]
