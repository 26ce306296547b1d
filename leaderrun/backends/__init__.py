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
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from leaderrun import metrics
from leaderrun.errors import UsageError
from leaderrun.settings import Settings

ENTRY_POINT_GROUP = "leaderrun.backends"


class Flag:
    """A one-way flag that wakes every wait linked to it. As a campaign's cancel switch,
    SIGTERM, `--no-wait` or `--wait-timeout` end it at once, whatever store call or watch it
    waits in; as a term's `lost`, it ends every wait of that term.

    Backends never sleep: they wait on a `threading.Event` linked here (see `linked`), which
    the watch callback, the lease thread or this switch sets, whichever comes first.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._wakers: set[threading.Event] = set()

    def set(self) -> None:
        with self._lock:
            if self._set:
                return
            self._set = True
            wakers = list(self._wakers)
        for waker in wakers:
            waker.set()

    def is_set(self) -> bool:
        return self._set

    @contextmanager
    def linked(self, event: threading.Event) -> Iterator[threading.Event]:
        """Within the block, setting the flag also sets `event` (at once if already set)."""
        with self._lock:
            self._wakers.add(event)
            if self._set:
                event.set()
        try:
            yield event
        finally:
            with self._lock:
                self._wakers.discard(event)

    def sleep(self, seconds: float) -> bool:
        """Wait `seconds` unless set first; True when set."""
        with self.linked(threading.Event()) as woken:
            woken.wait(max(0.0, seconds))
        return self._set


@contextmanager
def woken_by(event: threading.Event, *flags: Flag) -> Iterator[threading.Event]:
    """Within the block, setting any of `flags` also sets `event`: one wait for many ends."""
    with ExitStack() as stack:
        for flag in flags:
            stack.enter_context(flag.linked(event))
        yield event


class Cancelled(Exception):
    """A store call or wait gave up because its cancel `Flag` was set."""


@dataclass
class LeaseClock:
    """What the server has promised: the lease cannot expire before `last_ack + ttl`.

    `last_ack` is the monotonic *send* time of the newest renewal the server answered; a
    backend updates it from its renewal thread, the supervisor (and, through it, the guard
    process) reads it to know when the child must be stopped (SPEC §3 timing rule) no matter
    what the backend says or fails to say. `listener` is called after every change; it must
    not block (the supervisor's is one write to a non-blocking pipe).
    """

    ttl: float
    last_ack: float = field(default_factory=time.monotonic)
    election: str = ""
    listener: Callable[[], None] = field(default=lambda: None, repr=False)
    #: Once a child runs: how long before the deadline it must be stopped (`stop_margin`).
    #: An answer that arrives after that point sets `lapsed` for good: a worker that was
    #: stalled past it may find its renewals answered again, but the guard may have stopped
    #: the child meanwhile, and the term is over whatever the server says now.
    stop_margin: float | None = None
    lapsed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def acked(self, sent_at: float, ttl: float, record: bool = True) -> None:
        """The server answered a renewal sent at `sent_at` (monotonic), granting `ttl`.
        `record=False`: the backend recorded the renewal's metrics itself (ZooKeeper moves the
        clock to an older renewal than the one just answered; see its `_vouched`)."""
        if record:
            metrics.renewed(self.election, sent_at)
        with self._lock:
            margin = self.stop_margin
            if margin is not None and time.monotonic() >= self.last_ack + self.ttl - margin:
                self.lapsed = True
            if sent_at > self.last_ack:
                self.last_ack = sent_at
            self.ttl = ttl
        self.listener()

    def guard(self, stop_margin: float) -> None:
        """From now on, an answer later than `stop_margin` before the deadline lapses the term."""
        with self._lock:
            self.stop_margin = stop_margin

    def deadline(self) -> float:
        """The earliest monotonic time at which the server may expire the lease."""
        with self._lock:
            return self.last_ack + self.ttl

    def since_ack(self) -> float:
        with self._lock:
            return time.monotonic() - self.last_ack


@dataclass
class Term:
    """One candidacy, from joining the queue to release: everything about it lives here.

    A backend creates it when it joins the queue (`key`, `clock`, its own lease or session in
    `handle`) and sets `token` when elected. `lost` is set once, by whoever learns first that
    the term is over (lease expired, key deleted, session closed, resigned); nothing of an
    older term can touch a newer one, since each has its own object.
    """

    key: str
    clock: LeaseClock
    handle: dict[str, Any] = field(default_factory=dict)
    token: int = 0
    lost: Flag = field(default_factory=Flag)
    lost_reason: str = ""
    #: Set when the store confirmed the release (key deleted / lease revoked / session closed).
    released: bool = False
    #: Who asked this term to hand over (`step-down`), once someone did.
    handover_by: str = ""
    #: Under `--max-holders N`, the holder's slot (0..N-1, unique among the holders); else 0.
    slot: int = 0

    def lose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()
            self.clock.listener()

    @property
    def elected(self) -> bool:
        return self.token > 0

    def ask_handover(self, by: str) -> None:
        """`step-down` asked this term to hand over: stop the child as when it ends, then
        release. The term is not lost: it stays renewed while the child stops."""
        if not self.handover_by and not self.lost.is_set():
            self.handover_by = by or "an operator"
            self.clock.listener()


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

    @property
    def slot(self) -> int | None:
        """The slot a holder took under `--max-holders` (None for a waiter, or N = 1)."""
        from leaderrun.record import int_field

        return int_field(self.value, "slot")

    @property
    def max_holders(self) -> int | None:
        """The `--max-holders` this candidate runs with: 1 for ours without the field (N = 1
        and older versions), None for a foreign value (`etcdctl elect`), which says nothing."""
        from leaderrun.record import int_field, parse_value

        if parse_value(self.value) is None:
            return None
        return int_field(self.value, "holders") or 1


@dataclass(frozen=True)
class ElectionView:
    """One election as `status` shows it: the queue in order (leader first) and the record of
    the last successful run (`--once-per`), raw bytes as stored, or None."""

    name: str
    candidates: tuple[Candidate, ...]
    last_run: bytes | None = None
    #: A pending `step-down` request (`record.step_down_request`), raw, or None; under
    #: `--max-holders`, the pending requests by slot.
    step_down: bytes | None = None
    #: The election's `--max-holders` as its candidates say (1 when none says otherwise).
    max_holders: int = 1
    step_downs: Mapping[int, bytes] = field(default_factory=dict)
    #: What the last run of any term ended with (`record.outcome_record`), raw, or None.
    outcome: bytes | None = None

    @property
    def leader(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None

    @property
    def holders(self) -> tuple[Candidate, ...]:
        return self.candidates[: self.max_holders]

    @property
    def waiters(self) -> tuple[Candidate, ...]:
        return self.candidates[self.max_holders :]


def election_holders(candidates: Iterable[Candidate]) -> int:
    """The `--max-holders` of an election, as the first of its candidates that says it."""
    for candidate in candidates:
        if candidate.max_holders is not None:
            return candidate.max_holders
    return 1


def check_max_holders(settings: Settings, candidates: Iterable[Candidate]) -> None:
    """Refuse to join an election whose candidates run with another `--max-holders`: two
    values of N in one queue would let more jobs run at once than either side allows."""
    for candidate in candidates:
        theirs = candidate.max_holders
        if theirs is not None and theirs != settings.max_holders:
            raise UsageError(
                f"--max-holders {settings.max_holders} does not match election "
                f"{settings.election!r}, where {candidate.identity} runs with --max-holders "
                f"{theirs}; changing N needs every candidate of the election restarted with "
                "the same value"
            )


class Backend(abc.ABC):
    """One connection to a store; each candidacy on it is a `Term` of its own.

    Every call is bounded (connect timeout, per-request deadlines) and every wait can be ended
    by its cancel `Flag`; store errors are translated here, at the boundary, into leaderrun's own
    (`BackendUnreachable`, `BackendRefused`, `Cancelled`), so the supervisor never sees a
    client library's exception.
    """

    #: URL schemes this backend serves, e.g. ("etcd", "etcds").
    schemes: tuple[str, ...] = ()

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: Called with a waiting-behind `Candidate` whenever the one ahead of us changes.
        self.on_waiting: Callable[[Candidate], None] = lambda candidate: None
        #: Becomes each new term's `clock.listener`: called (from any thread) after every
        #: answered renewal and when the term is lost. Must not block.
        self.on_term_change: Callable[[], None] = lambda: None
        #: Called with each new term once its lease/session exists (before it can be elected),
        #: so the guard can release it should the worker die.
        self.on_queued: Callable[[Term], None] = lambda term: None

    @abc.abstractmethod
    def connect(self, cancel: Flag | None = None) -> None:
        """Reach the store within `settings.connect_timeout`.

        Raises BackendUnreachable (exit 69), BackendRefused (exit 77) or Cancelled.
        """

    @abc.abstractmethod
    def campaign(self, value: bytes, cancel: Flag) -> Term | None:
        """Join the queue as a new `Term` and block until elected; None when `cancel` was set
        first; the candidacy is then withdrawn (bounded: a store that does not answer leaves
        it to expire).

        Candidates are served in arrival order and each waiter watches only the candidate just
        ahead of it. The lease/session is renewed from the moment the candidate is in the queue.
        """

    @abc.abstractmethod
    def resign(self, term: Term) -> bool:
        """Leave the election (leader or waiter) so the next candidate starts at once.

        True only when the store confirmed it (key/node gone, lease revoked, session closed);
        False when it could not tell: the term's lease/session then expires by itself, and the
        backend must not let a later term queue behind this one's leftover.
        """

    @classmethod
    @abc.abstractmethod
    def release_orphaned(cls, settings: Settings, handle: Mapping[str, Any]) -> None:
        """Release a lease/session (a `Term.handle`) whose worker died (called by the guard)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Drop the connection; does not release anything by itself."""

    def announce(self, term: Term, value: bytes) -> None:  # noqa: B027
        """Replace our candidate value while leading (to show the child's pid and since when
        we lead), without changing the fencing token, under the term's own lease/session and
        only while the term holds. Optional: a backend may ignore it."""

    # -- the last-successful-run record (`--once-per`) -------------------------------------------

    @abc.abstractmethod
    def last_run(self) -> bytes | None:
        """The election's last-run record as stored, or None when there is none.

        It lives at the election's own path (`<prefix>/<election>`: the etcd key without the
        trailing slash, the ZooKeeper parent node's data), outside the candidate queue.
        """

    @abc.abstractmethod
    def record_run(self, term: Term, record: bytes) -> bool:
        """Write the last-run record only if `term` still leads, atomically.

        etcd: a transaction conditioned on our leader key's create revision; ZooKeeper: a
        multi-op checking our node. False when leadership was gone, so nothing was written.
        """

    # -- every run's outcome (`status`) ----------------------------------------------------------

    def record_outcome(
        self, election: str, token: int, record: bytes, cancel: Flag | None = None
    ) -> bool:
        """Write what the run of term `token` ended with at `outcome_path`, compare-and-set:
        read the stored outcome with its version, write only if it is of an older term (a
        newer term's outcome is never replaced by an older one), again if the version changed
        meanwhile; a few attempts within `OUTCOME_TIMEOUT`, ended at once by `cancel`.

        Called after the release (the next leader must not wait for it), so not guarded by
        leadership. True when written; False when a newer outcome is there, or when the
        backend does not keep outcomes (this default).
        """
        return False

    # -- observing and steering (`status`, `step-down`) -------------------------------------------

    @abc.abstractmethod
    def elections(self) -> list[str]:
        """Names of the elections under the prefix that have candidates, a record or an
        outcome."""

    @abc.abstractmethod
    def view(self, election: str) -> ElectionView:
        """The queue of `election` in order, leader first, with the last-run record."""

    @abc.abstractmethod
    def request_step_down(self, election: str, leader: Candidate, request: bytes) -> bool:
        """Ask `leader` (a holder) to hand over: write `request` at `step_down_path` (of its
        slot under `--max-holders`), only while it still holds (False when it no longer
        does). A holder watches that path from its election on, and a request naming another
        term's token is ignored and cleaned up."""

    @abc.abstractmethod
    def withdraw_step_down(self, election: str, request: bytes, slot: int | None = None) -> None:
        """Remove `request` if it is still the pending one (the holder did not act in time)."""

    @abc.abstractmethod
    def changes(self, election: str) -> AbstractContextManager[Callable[[float], bool]]:
        """For operators' waits (`step-down`): within the block, `wait(until)` returns True
        once something in `election`'s queue changed since the previous call (or the block
        began), False at `until` (monotonic). A store watch: no backend looks on a timer."""

    @abc.abstractmethod
    def force_step_down(self, election: str, slot: int | None = None) -> Candidate | None:
        """Delete the key/node of the leader (of the holder of `slot`) of `election` at once;
        the candidate it was, or None when there was none."""

    def own_step_down_path(self, term: Term) -> str:
        """Where requests for `term` arrive: its slot's under `--max-holders`."""
        slot = term.slot if self.settings.max_holders > 1 else None
        return step_down_path(self.settings.prefix, self.settings.election, slot)


def step_down_path(root: str, election: str, slot: int | None = None) -> str:
    """Where a step-down request for `election` lives: outside the candidate queue, under a
    name no election can have ('@' is not allowed in election names), so `etcdctl elect`,
    kazoo's contenders and `status` never take it for a candidate or an election. Under
    `--max-holders` each slot has its own (`<election>@<slot>`), watched by its holder."""
    name = election if slot is None else f"{election}@{slot}"
    return f"{root}/{STEP_DOWN_DIR}/{name}"


STEP_DOWN_DIR = "@step-down"


def outcome_path(root: str, election: str) -> str:
    """Where the outcome of `election`'s last run lives: like step-down requests, under a name
    no election can have, so no election recipe takes it for a candidate."""
    return f"{root}/{OUTCOME_DIR}/{election}"


OUTCOME_DIR = "@last-run"
#: Bounds of `Backend.record_outcome`: attempts after a version conflict, and seconds in all.
OUTCOME_ATTEMPTS = 4
OUTCOME_TIMEOUT = 2.0


#: leaderrun's own backends, as pyproject.toml registers them in `leaderrun.backends`: found
#: without scanning every installed distribution's metadata (~40 ms of every start).
BUILT_IN = {
    "etcd": "leaderrun.backends.etcd:EtcdBackend",
    "etcds": "leaderrun.backends.etcd:EtcdBackend",
    "zk": "leaderrun.backends.zookeeper:ZooKeeperBackend",
    "zks": "leaderrun.backends.zookeeper:ZooKeeperBackend",
}


def backend_class(scheme: str) -> type[Backend]:
    """Find the backend for a URL scheme: leaderrun's own directly, any other through the
    `leaderrun.backends` entry points (how a third party adds one)."""
    if scheme in BUILT_IN:
        module, _, name = BUILT_IN[scheme].partition(":")
        cls: type[Backend] = getattr(import_module(module), name)
        return cls
    from importlib.metadata import entry_points

    found = entry_points(group=ENTRY_POINT_GROUP, name=scheme)
    for entry in found:
        cls = entry.load()
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise UsageError(f"--backend: entry point {entry.value!r} is not a leaderrun Backend")
        return cls
    known = sorted({*BUILT_IN, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})
    raise UsageError(
        f"--backend: no backend for scheme {scheme!r}; use one of: "
        + ", ".join(f"{name}://" for name in known)
    )
