"""The small interface every election backend implements, and how backends are found.

A backend is one module (etcd, ZooKeeper, or a third party's) exposing a `Backend` subclass
through the entry-point group `leaderrun.backends`, keyed by URL scheme. The supervisor only
ever talks to this interface, so the safety logic (when to stop the child) lives in one place
and is the same for every store.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from leaderrun import metrics
from leaderrun.errors import UsageError
from leaderrun.settings import Settings

ENTRY_POINT_GROUP = "leaderrun.backends"


@dataclass
class LeaseClock:
    """What the server has promised: the lease cannot expire before `last_ack + ttl`.

    `last_ack` is the monotonic *send* time of the newest renewal the server answered; a
    backend updates it from its renewal thread, the supervisor reads it to know when it must
    stop the child (SPEC §3 timing rule) no matter what the backend says or fails to say.
    """

    ttl: float
    last_ack: float = field(default_factory=time.monotonic)
    election: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def acked(self, sent_at: float, ttl: float) -> None:
        """The server answered a renewal sent at `sent_at` (monotonic), granting `ttl`."""
        metrics.renewed(self.election, sent_at)
        with self._lock:
            if sent_at > self.last_ack:
                self.last_ack = sent_at
            self.ttl = ttl

    def deadline(self) -> float:
        """The earliest monotonic time at which the server may expire the lease."""
        with self._lock:
            return self.last_ack + self.ttl

    def since_ack(self) -> float:
        with self._lock:
            return time.monotonic() - self.last_ack


@dataclass
class Leadership:
    """One term: held from election until `lost` is set or the holder resigns."""

    token: int
    key: str
    clock: LeaseClock
    lost: threading.Event = field(default_factory=threading.Event)
    lost_reason: str = ""

    def lose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()


@dataclass(frozen=True)
class Candidate:
    """Who is in the queue, as read back from the store (for logs and `status`).

    `value` is whatever the store holds (ours is `record.candidate_value`, but a foreign or
    damaged value must still be shown, never crash). `ttl_left` is the seconds the leader's
    lease/session has left where the store can tell (etcd), else None.
    """

    key: str
    token: int
    value: bytes
    ttl_left: float | None = None

    @property
    def identity(self) -> str:
        from leaderrun.record import identity_of

        return identity_of(self.value)


@dataclass(frozen=True)
class ElectionView:
    """One election as `status` shows it: the queue in order (leader first) and the record of
    the last successful run (`--once-per`), raw bytes as stored, or None."""

    name: str
    candidates: tuple[Candidate, ...]
    last_run: bytes | None = None

    @property
    def leader(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None


class Backend(abc.ABC):
    """One connection to a store, holding at most one candidacy at a time."""

    #: URL schemes this backend serves, e.g. ("etcd", "etcds").
    schemes: tuple[str, ...] = ()

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: Called with a waiting-behind `Candidate` whenever the one ahead of us changes.
        self.on_waiting: Callable[[Candidate], None] = lambda candidate: None

    @abc.abstractmethod
    def connect(self) -> None:
        """Reach the store within `settings.connect_timeout`.

        Raises BackendUnreachable (exit 69) or BackendRefused (exit 77).
        """

    @abc.abstractmethod
    def campaign(self, value: bytes, cancel: threading.Event) -> Leadership | None:
        """Join the queue and block until elected; None when `cancel` was set first.

        Candidates are served in arrival order and each waiter watches only the candidate just
        ahead of it. The lease/session is renewed from the moment the candidate is in the queue.
        """

    @abc.abstractmethod
    def resign(self) -> None:
        """Leave the election (leader or waiter) so the next candidate starts at once."""

    @abc.abstractmethod
    def release_handle(self) -> Mapping[str, Any] | None:
        """A JSON-able description of the current lease/session, for `release_orphaned`."""

    @classmethod
    @abc.abstractmethod
    def release_orphaned(cls, settings: Settings, handle: Mapping[str, Any]) -> None:
        """Release a lease/session whose owning process died (called by leaderrun's guard)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Drop the connection; does not release anything by itself."""

    def announce(self, leadership: Leadership, value: bytes) -> None:  # noqa: B027
        """Replace our candidate value while leading (to show the child's pid and since when
        we lead), without changing the fencing token. Optional: a backend may ignore it."""

    # -- the last-successful-run record (`--once-per`) -------------------------------------------

    @abc.abstractmethod
    def last_run(self) -> bytes | None:
        """The election's last-run record as stored, or None when there is none.

        It lives at the election's own path (`<prefix>/<election>`: the etcd key without the
        trailing slash, the ZooKeeper parent node's data), outside the candidate queue.
        """

    @abc.abstractmethod
    def record_run(self, leadership: Leadership, record: bytes) -> bool:
        """Write the last-run record only if `leadership` is still held, atomically.

        etcd: a transaction conditioned on our leader key's create revision; ZooKeeper: a
        multi-op checking our node. False when leadership was gone, so nothing was written.
        """

    # -- observing and steering (`status`, `step-down`) -------------------------------------------

    @abc.abstractmethod
    def elections(self) -> list[str]:
        """Names of the elections under the prefix that have candidates or a record."""

    @abc.abstractmethod
    def view(self, election: str) -> ElectionView:
        """The queue of `election` in order, leader first, with the last-run record."""

    @abc.abstractmethod
    def step_down(self, election: str) -> Candidate | None:
        """Delete the current leader's key/node of `election`; the leader it was, or None."""


def backend_class(scheme: str) -> type[Backend]:
    """Find the backend for a URL scheme through the `leaderrun.backends` entry points."""
    found = entry_points(group=ENTRY_POINT_GROUP, name=scheme)
    for entry in found:
        cls = entry.load()
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise UsageError(f"--backend: entry point {entry.value!r} is not a leaderrun Backend")
        return cls
    known = sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
    raise UsageError(
        f"--backend: no backend for scheme {scheme!r}; use one of: "
        + ", ".join(f"{name}://" for name in known)
    )
