"""etcd v3 backend: etcd's own election recipe over the gRPC API (client: etcd-sdk-python).

Store layout, as etcd's `concurrency.Election` makes it (so `etcdctl elect --listen` sees our
leader): each candidate puts `<prefix>/<election>/<lease id in hex>` under its own lease; the
leader is the key with the lowest create revision, and that revision is the fencing token.
A waiter watches only the key just ahead of it for deletion.

The client needs three corrections to survive a member restart (measured, see the issue):
- an endpoint that failed once is skipped for 300 s by default: we retry it after 0.2 s;
- gRPC's reconnect backoff grows to 120 s: we cap it at 0.5 s;
- every call gets a short deadline, so a frozen server cannot hang a renewal.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from enum import Enum
from typing import Any

import grpc
import pyetcd
from pyetcd import etcdrpc
from pyetcd.client import Endpoint, EtcdTokenCallCredentials, MultiEndpointEtcd3Client

from leaderrun import metrics
from leaderrun.backends import Backend, Candidate, ElectionView, Leadership, LeaseClock
from leaderrun.errors import BackendRefused, BackendUnreachable
from leaderrun.settings import Settings

log = logging.getLogger(__name__)

ENDPOINT_RETRY = 0.2
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


class WatchEnd(Enum):
    DELETED = "deleted"
    BROKEN = "broken"
    STOPPED = "stopped"


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


def is_tls_failure(exc: BaseException) -> bool:
    err = grpc_error(exc)
    details = (err.details() or "").lower() if err is not None else ""
    return any(word in details for word in TLS_FAILURE_WORDS)


def refusal_error(exc: BaseException) -> BackendRefused:
    return BackendRefused(
        f"etcd refused the request ({describe(exc)}); check --user and the role's permissions "
        "on the prefix"
    )


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as handle:
        return handle.read()


def make_client(settings: Settings, rpc_timeout: float) -> MultiEndpointEtcd3Client:
    """A client with the three corrections of the module docstring, and TLS if asked."""
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
    return MultiEndpointEtcd3Client(endpoints=endpoints, timeout=rpc_timeout, failover=True)


class EtcdBackend(Backend):
    """One etcd session: one lease, at most one key in one election."""

    schemes = ("etcd", "etcds")

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        timing = settings.timing
        self.rpc_timeout = max(0.5, min(2.0, timing.renew_interval))
        self.client = make_client(settings, self.rpc_timeout)
        self.key_prefix = settings.election_path + "/"
        self.lease_id: int | None = None
        self.clock: LeaseClock | None = None
        self.leadership: Leadership | None = None
        self.lease_gone = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._unrevoked: list[int] = []

    # -- connection ---------------------------------------------------------------------------

    def connect(self) -> None:
        deadline = time.monotonic() + self.settings.connect_timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                with self._call_timeout(deadline - time.monotonic()):
                    self._authenticate()
                    self.client.get(self.key_prefix)
                return
            except TRANSIENT_ERRORS as exc:
                if is_refusal(exc):
                    raise refusal_error(exc) from None
                if is_tls_failure(exc):
                    raise BackendRefused(
                        f"TLS with etcd at {self.settings.backend} failed ({describe(exc)}); "
                        "check --cacert, --cert and --key"
                    ) from None
                last = exc
                time.sleep(min(RETRY_INTERVAL, max(0.0, deadline - time.monotonic())))
        raise BackendUnreachable(
            f"cannot reach etcd at {self.settings.backend} within "
            f"{self.settings.connect_timeout:g}s ({describe(last)}); "
            "check --backend and that etcd is running"
        )

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

    def _recover(self, exc: BaseException) -> None:
        """After a failed request: count it, and log in again if our token expired."""
        metrics.backend_error(self.settings.election)
        if is_token_expired(exc):
            log.info("etcd auth token expired; logging in again")
            with suppress(*TRANSIENT_ERRORS):
                self._authenticate()

    @contextmanager
    def _call_timeout(self, seconds: float) -> Iterator[None]:
        previous = self.client.timeout
        self.client.timeout = max(0.05, min(previous, seconds))
        try:
            yield
        finally:
            self.client.timeout = previous

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.rpc_timeout + 1)
        self.client.close()

    # -- the lease ----------------------------------------------------------------------------

    def _grant_lease(self) -> None:
        """Grant a fresh lease and keep it alive from now on (waiting can take long)."""
        self._revoke_leftover_leases()
        requested = max(1, math.ceil(self.settings.timing.ttl))
        sent = time.monotonic()
        lease = self._retry(lambda: self.client.lease(requested))
        granted = float(lease.ttl)
        if granted != requested:
            log.info("etcd granted a TTL of %gs (asked %ds)", granted, requested)
            self.settings.timing.with_granted_ttl(granted).check("TTL etcd granted")
        self.lease_id = lease.id
        self.lease_gone = threading.Event()
        self.clock = LeaseClock(ttl=granted, last_ack=sent, election=self.settings.election)
        self._start_thread(f"keepalive-{lease.id:x}", self._keepalive_loop, lease.id, self.clock)

    def _keepalive_loop(self, lease_id: int, clock: LeaseClock) -> None:
        lease_gone = self.lease_gone
        failing_since: float | None = None
        while not self._stop.is_set() and not lease_gone.is_set():
            sent = time.monotonic()
            try:
                responses = list(self.client.refresh_lease(lease_id))
                ttl = responses[0].TTL if responses else 0
            except TRANSIENT_ERRORS as exc:
                self._recover(exc)
                if failing_since is None:
                    failing_since = sent
                    log.debug("lease keep-alive failed: %s", describe(exc))
                self._stop.wait(RETRY_INTERVAL)
                continue
            if ttl <= 0:
                self._lease_expired("the lease expired on the etcd server")
                return
            clock.acked(sent, float(ttl))
            if failing_since is not None:
                log.info("lease keep-alive answered again after %.1fs", sent - failing_since)
                failing_since = None
            self._stop.wait(self.settings.timing.renew_interval)

    def _lease_expired(self, reason: str) -> None:
        self.lease_gone.set()
        if self.leadership is not None:
            self.leadership.lose(reason)

    # -- the election -------------------------------------------------------------------------

    def campaign(self, value: bytes, cancel: threading.Event) -> Leadership | None:
        while not cancel.is_set():
            self._grant_lease()
            assert self.lease_id is not None and self.clock is not None
            key = f"{self.key_prefix}{self.lease_id:x}"
            self._put(key, value, self.lease_id)
            token = self._wait_until_first(key, cancel)
            if token is not None:
                self.leadership = Leadership(token=token, key=key, clock=self.clock)
                self._start_thread("leader-watch", self._watch_own_key, self.leadership)
                return self.leadership
            self._revoke_quietly()
        return None

    def _put(self, key: str, value: bytes, lease_id: int) -> None:
        self._retry(lambda: self.client.put(key, value, lease=lease_id))

    def _wait_until_first(self, key: str, cancel: threading.Event) -> int | None:
        """Block until `key` has the lowest create revision; its revision, or None if cancelled
        or our lease vanished while waiting (the caller then queues again with a new lease)."""
        ahead_key: str | None = None

        def should_stop() -> bool:
            return cancel.is_set() or self.lease_gone.is_set()

        while not should_stop():
            try:
                queue_now = list(
                    self.client.get_prefix(
                        self.key_prefix, sort_order="ascend", sort_target="create"
                    )
                )
            except TRANSIENT_ERRORS as exc:
                self._raise_if_refused(exc)
                self._recover(exc)
                cancel.wait(RETRY_INTERVAL)
                continue
            mine = [meta for _, meta in queue_now if meta.key.decode() == key]
            if not mine:
                log.warning("our candidate key %s vanished while waiting; queueing again", key)
                return None
            token = mine[0].create_revision
            ahead = [(v, meta) for v, meta in queue_now if meta.create_revision < token]
            if not ahead:
                return int(token)
            value, meta = ahead[-1]
            if meta.key.decode() != ahead_key:
                ahead_key = meta.key.decode()
                self.on_waiting(Candidate(meta.key.decode(), int(meta.create_revision), value))
            end = self._wait_deleted(meta.key.decode(), meta.response_header.revision, should_stop)
            if end is WatchEnd.BROKEN:
                cancel.wait(RETRY_INTERVAL)
        return None

    def _watch_own_key(self, leadership: Leadership) -> None:
        """Lose leadership as soon as our key is gone (step-down, `etcdctl del`, expiry)."""

        def should_stop() -> bool:
            return self._stop.is_set() or leadership.lost.is_set()

        while not should_stop():
            try:
                _, meta = self.client.get(leadership.key)
            except TRANSIENT_ERRORS as exc:
                self._recover(exc)
                self._stop.wait(RETRY_INTERVAL)
                continue
            if meta is None or meta.create_revision != leadership.token:
                leadership.lose(f"our leader key {leadership.key} was deleted")
                return
            end = self._wait_deleted(leadership.key, meta.response_header.revision, should_stop)
            if end is WatchEnd.DELETED:
                leadership.lose(f"our leader key {leadership.key} was deleted")
                return
            if end is WatchEnd.BROKEN:
                self._stop.wait(RETRY_INTERVAL)

    def _wait_deleted(
        self, key: str, seen_revision: int, should_stop: Callable[[], bool]
    ) -> WatchEnd:
        """Wait for a DELETE of `key` after `seen_revision`, so no event between the read and
        the watch is missed."""
        events: queue.Queue[Any] = queue.Queue()
        try:
            watch_id = self.client.add_watch_callback(
                key, events.put, start_revision=seen_revision + 1
            )
        except TRANSIENT_ERRORS as exc:
            self._recover(exc)
            log.debug("watch on %s failed: %s", key, describe(exc))
            return WatchEnd.BROKEN
        try:
            while not should_stop():
                try:
                    item = events.get(timeout=0.1)
                except queue.Empty:
                    continue
                if not isinstance(item, pyetcd.watch.WatchResponse):
                    return WatchEnd.BROKEN
                if any(isinstance(e, pyetcd.events.DeleteEvent) for e in item.events):
                    return WatchEnd.DELETED
            return WatchEnd.STOPPED
        finally:
            with suppress(*TRANSIENT_ERRORS):
                self.client.cancel_watch(watch_id)

    # -- leaving ------------------------------------------------------------------------------

    def resign(self) -> None:
        """Revoke the lease: the key goes with it and the next waiter is woken at once."""
        if self.leadership is not None:
            self.leadership.lose("resigned")
        self._revoke_quietly()
        self.leadership = None

    def _revoke_quietly(self) -> None:
        lease_id, self.lease_id = self.lease_id, None
        self.lease_gone.set()
        if lease_id is None:
            return
        try:
            self._retry(lambda: self.client.revoke_lease(lease_id), attempts=8)
        except Exception as exc:  # the lease expires by itself anyway
            self._unrevoked.append(lease_id)
            log.warning(
                "could not revoke lease %x (%s); it expires on its own within %gs",
                lease_id,
                describe(exc),
                self.settings.timing.ttl,
            )

    def _revoke_leftover_leases(self) -> None:
        """Revoke leases we failed to revoke earlier (store down), so that under --forever our
        own stale key cannot stand ahead of our new candidacy until it expires."""
        leftovers, self._unrevoked = self._unrevoked, []
        for lease_id in leftovers:
            with suppress(*TRANSIENT_ERRORS):
                self.client.revoke_lease(lease_id)
                log.debug("revoked leftover lease %x", lease_id)

    def release_handle(self) -> Mapping[str, Any] | None:
        return {"lease": self.lease_id} if self.lease_id is not None else None

    @classmethod
    def release_orphaned(cls, settings: Settings, handle: Mapping[str, Any]) -> None:
        backend = cls(settings)
        try:
            backend.connect()
            backend._retry(lambda: backend.client.revoke_lease(int(handle["lease"])), attempts=20)
        finally:
            backend.close()

    def announce(self, leadership: Leadership, value: bytes) -> None:
        txn = self.client.transactions
        self._retry(
            lambda: self.client.transaction(
                compare=[txn.create(leadership.key) == leadership.token],
                success=[txn.put(leadership.key, value, lease=self.lease_id)],
                failure=[],
            ),
            attempts=3,
        )

    # -- last-run record ------------------------------------------------------------------------

    def last_run(self) -> bytes | None:
        value, _ = self._retry(lambda: self.client.get(self.settings.election_path), attempts=8)
        return bytes(value) if value is not None else None

    def record_run(self, leadership: Leadership, record: bytes) -> bool:
        txn = self.client.transactions
        succeeded, _ = self._retry(
            lambda: self.client.transaction(
                compare=[txn.create(leadership.key) == leadership.token],
                success=[txn.put(self.settings.election_path, record)],
                failure=[],
            ),
            attempts=8,
        )
        return bool(succeeded)

    # -- observing and steering -----------------------------------------------------------------

    def elections(self) -> list[str]:
        root = self.settings.prefix + "/"
        found = self._retry(lambda: list(self.client.get_prefix(root, keys_only=True)))
        names = {
            meta.key.decode("utf-8", "replace")[len(root) :].split("/")[0] for _, meta in found
        }
        return sorted(name for name in names if name)

    def view(self, election: str) -> ElectionView:
        path = f"{self.settings.prefix}/{election}"
        found = self._retry(
            lambda: list(
                self.client.get_prefix(path + "/", sort_order="ascend", sort_target="create")
            )
        )
        candidates = [
            Candidate(meta.key.decode("utf-8", "replace"), int(meta.create_revision), bytes(value))
            for value, meta in found
        ]
        if candidates:
            lease = found[0][1].lease_id
            ttl = self._retry(lambda: self.client.get_lease_info(lease)).TTL if lease else None
            leader = candidates[0]
            candidates[0] = Candidate(leader.key, leader.token, leader.value, ttl_left=ttl)
        record, _ = self._retry(lambda: self.client.get(path))
        return ElectionView(election, tuple(candidates), bytes(record) if record else None)

    def step_down(self, election: str) -> Candidate | None:
        leader = self.view(election).leader
        if leader is None:
            return None
        txn = self.client.transactions
        self._retry(
            lambda: self.client.transaction(
                compare=[txn.create(leader.key) == leader.token],
                success=[txn.delete(leader.key)],
                failure=[],
            )
        )
        return leader

    # -- helpers ------------------------------------------------------------------------------

    def _retry(self, call: Callable[[], Any], attempts: int | None = None) -> Any:
        """Retry a call through a blip; refusals are final (exit 77)."""
        tries = 0
        while True:
            try:
                return call()
            except TRANSIENT_ERRORS as exc:
                self._raise_if_refused(exc)
                self._recover(exc)
                tries += 1
                if attempts is not None and tries >= attempts:
                    raise
                if tries == 8:
                    log.warning("etcd is not answering (%s); still trying", describe(exc))
                time.sleep(RETRY_INTERVAL)

    @staticmethod
    def _raise_if_refused(exc: BaseException) -> None:
        if is_refusal(exc):
            raise refusal_error(exc) from None

    def _start_thread(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()


def describe(exc: BaseException | None) -> str:
    """A short, secret-free description of a client error for one-line messages."""
    if exc is None:
        return "no answer"
    err = grpc_error(exc)
    if err is not None:
        return f"{err.code().name}: {err.details()}"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]
