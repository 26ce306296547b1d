"""The machinery of `make bench` (tests/test_bench.py): contenders, measurements, the table.

Every figure is measured for leaderrun and for its peer (`etcdctl lock`, kazoo's `Lock`
recipe, a bare pyetcd client) in the same run, against the same server. A measurement that
fails (leaderrun mid-rewrite, a tool missing) becomes an "error: ..." cell instead of
aborting the table, and every process it started is killed before the next one begins:
processes are marked through their environment, so even a job orphaned by a SIGKILLed tool
(or a leaderrun that failed to stop its child) is found and killed.

The table is printed in pytest's terminal summary and written as markdown to
`build/bench-results.md` (build/ is git-ignored).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import resource
import select
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
from helpers import LEADERRUN_CMD, ProcessRegistry, TrackedPopen, clean_env, descendants
from runs import alive
from servers import ETCDCTL_BIN, EtcdCluster, run_etcdctl
from stores import PREFIX, Store, ZkStore

DASH = "\u2013"  # en dash: "no figure" and min-max ranges
TIMES = "\u00d7"
CLK_TCK = os.sysconf("SC_CLK_TCK")
KB_TO_MIB = 1 / 1024  # VmRSS is in kB
MARK_VAR = "BENCH_PROC_MARK"
#: etcdctl lock names live here, apart from leaderrun's elections.
LOCK_PREFIX = "/bench-lock"


class BenchError(Exception):
    """A measurement could not be taken; the message is one line for the table."""


# -- results --------------------------------------------------------------------------------


@dataclass
class Cell:
    """One measured figure: the text shown, the samples behind it (base units: seconds, %,
    MiB), or the error that prevented it."""

    text: str
    samples: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples and not self.error else None


Verdict = Callable[[Cell | None, Cell | None], bool | None]


def at_most_times(factor: float) -> Verdict:
    """leaderrun's median <= factor x the peer's median."""

    def verdict(ours: Cell | None, peer: Cell | None) -> bool | None:
        a, b = (ours.median if ours else None), (peer.median if peer else None)
        if a is None or b is None or math.isinf(b):
            return None
        return a <= factor * b

    return verdict


def at_most(limit: float) -> Verdict:
    """leaderrun's median <= limit."""

    def verdict(ours: Cell | None, _peer: Cell | None) -> bool | None:
        a = ours.median if ours else None
        return None if a is None else a <= limit

    return verdict


def all_positive(ours: Cell | None, _peer: Cell | None) -> bool | None:
    """Every sample > 0 (a margin: negative means too late)."""
    if ours is None or ours.median is None:
        return None
    return min(ours.samples) > 0


@dataclass(frozen=True)
class Row:
    key: str
    figure: str
    peer: str
    target: str
    verdict: Verdict | None


ETCDCTL_LOCK = "etcdctl lock"
ROWS: tuple[Row, ...] = (
    Row("chain-etcd", "child exit -> next candidate's child starts, etcd (16-job chain)",
        ETCDCTL_LOCK, f"<= 2{TIMES} peer", at_most_times(2.0)),
    Row("chain-zk", "same on ZooKeeper (16-job chain)",
        "kazoo Lock (python)", "<= 30 ms", at_most(0.030)),
    Row("sigterm", "SIGTERM to the leader's process group -> next child runs (etcd)",
        ETCDCTL_LOCK, f"<= 2{TIMES} peer", at_most_times(2.0)),
    Row("sigkill", "SIGKILL of the tool's pid -> next child runs (etcd; TTL 60 s, etcdctl 10 s)",
        ETCDCTL_LOCK, "<= 200 ms", at_most(0.200)),
    Row("fifty", f"50 candidates {TIMES} 0.2 s job, started at once: total wall (etcd)",
        ETCDCTL_LOCK, f"<= 1.1{TIMES} peer", at_most_times(1.1)),
    Row("churn3-etcd", f"20 candidates {TIMES} 0.2 s job, --max-holders 3: total wall (etcd)",
        "xargs -P 3 (floor)", f"<= 2.5{TIMES} peer", at_most_times(2.5)),
    Row("churn3-zk", "same on ZooKeeper",
        "xargs -P 3 (floor)", f"<= 2.5{TIMES} peer", at_most_times(2.5)),
    Row("true-wall", "`leaderrun -- true` (console script), uncontended etcd: wall",
        "python floor (pyetcd)", f"<= 1.7{TIMES} peer", at_most_times(1.7)),
    Row("true-cpu", "same: CPU user+sys",
        "python floor (pyetcd)", DASH, None),
    Row("wait-cpu", "a waiting candidate: CPU % of a core over 10 s (etcd)",
        ETCDCTL_LOCK, "<= 0.3 %", at_most(0.3)),
    Row("leader-cpu", "a leader whose child sleeps (2nd term, --forever): CPU % over 10 s",
        DASH, "<= 2 %", at_most(2.0)),
    Row("rss", "RSS while leading (etcd), MiB",
        ETCDCTL_LOCK, "guard <= 20 MiB", at_most(20.0)),
    Row("freeze-etcd", "freeze margin, etcd: child seen dead before freeze + T - safety",
        DASH, "> 0 (every round)", all_positive),
    Row("freeze-zk", "freeze margin, ZooKeeper: same",
        DASH, "> 0 (every round)", all_positive),
)  # fmt: skip
SIDES = ("leaderrun", "peer")
Cells = dict[str, "Cell"]


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if not isinstance(exc, BenchError):
        first = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return first if len(first) <= 160 else first[:157] + "..."


def error_cell(exc: BaseException) -> Cell:
    return Cell(f"error: {one_line(exc)}", error=one_line(exc))


class Table:
    """The session's results: one cell per (row, side), printed once at the end."""

    def __init__(self) -> None:
        self.cells: dict[tuple[str, str], Cell] = {}
        self.started = time.time()

    def measure(self, key: str, side: str, how: Callable[[], Cell]) -> Cell:
        """Run one measurement; an exception becomes an error cell and does not escape (a
        pytest timeout or ^C is recorded too, then goes on)."""
        return self.measure_many((key,), side, lambda: {key: how()})[key]

    def measure_many(self, keys: Sequence[str], side: str, how: Callable[[], Cells]) -> Cells:
        """One measurement that fills several rows; an error fills them all."""
        assert side in SIDES and set(keys) <= {r.key for r in ROWS}, (keys, side)
        try:
            cells = how()
        except Exception as exc:
            cells = {key: error_cell(exc) for key in keys}
        except BaseException as exc:
            self.cells.update({(key, side): error_cell(exc) for key in keys})
            raise
        self.cells.update({(key, side): cells[key] for key in keys})
        return cells

    def fail_on_errors(self, *keys: str) -> None:
        """Fail the calling test (short message, no traceback) if one of its cells errored:
        the table shows it either way, the exit status must not hide it."""
        errors = [
            f"{key}/{side}: {cell.error}"
            for (key, side), cell in self.cells.items()
            if key in keys and cell.error
        ]
        if errors:
            pytest.fail("could not measure: " + "; ".join(errors), pytrace=False)

    def lines(self) -> list[list[str]]:
        header = ["figure", "leaderrun", "peer", "peer is", "target", "verdict"]
        out = [header]
        for row in ROWS:
            ours, peer = self.cells.get((row.key, "leaderrun")), self.cells.get((row.key, "peer"))
            if ours is None and peer is None:
                continue
            verdict = row.verdict(ours, peer) if row.verdict else None
            shown = "PASS" if verdict else "MISS" if verdict is not None else "n/a"
            if row.verdict is None:
                shown = DASH
            no_peer = row.peer == DASH
            peer_text = DASH if no_peer else peer.text if peer else "(not run)"
            ours_text = ours.text if ours else "(not run)"
            out.append([row.figure, ours_text, peer_text, row.peer, row.target, shown])
        return out

    def markdown(self) -> str:
        lines = self.lines()
        widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]

        def fmt(line: list[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"

        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return "\n".join([fmt(lines[0]), rule, *(fmt(line) for line in lines[1:])])

    def raw(self) -> str:
        """Every sample behind the table (seconds, percent or MiB as the row says)."""
        out = []
        for row in ROWS:
            for side in SIDES:
                cell = self.cells.get((row.key, side))
                if cell is not None and cell.samples:
                    values = ", ".join(f"{v:.6g}" for v in cell.samples)
                    out.append(f"- {row.key} / {side}: {values}")
        return "\n".join(out)

    def header(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return (
            f"leaderrun vs peers, {when}, {os.cpu_count()} CPUs, "
            f"load {os.getloadavg()[0]:.2f}; medians (min{DASH}max, n)"
        )

    # A pytest plugin, registered at run time by the session fixture.
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.cells:
            return
        text = self.markdown()
        terminalreporter.section("leaderrun bench")
        terminalreporter.write_line(self.header())
        for line in text.splitlines():
            terminalreporter.write_line(line)
        path = Path(terminalreporter.config.rootpath) / "build" / "bench-results.md"
        try:
            path.parent.mkdir(exist_ok=True)
            path.write_text(
                f"# leaderrun bench\n\n{self.header()}\n\n{text}\n\n## Samples\n\n{self.raw()}\n"
            )
            terminalreporter.write_line(f"written to {path}")
        except OSError as exc:
            terminalreporter.write_line(f"could not write {path}: {exc}")


# -- formatting -----------------------------------------------------------------------------


Unit = tuple[str, float, Callable[[float], str]]


def seconds_unit(values: Sequence[float]) -> Unit:
    """ms below a second (one decimal below 10 ms), else s with two decimals."""
    finite = [abs(v) for v in values if not math.isinf(v)]
    if finite and max(finite) >= 1:
        return "s", 1.0, lambda v: f"{v:.2f}"
    return "ms", 1000.0, lambda v: f"{v:.1f}" if abs(v) < 10 else f"{v:.0f}"


def percent_unit(_values: Sequence[float]) -> Unit:
    return "%", 1.0, lambda v: f"{v:.2f}"


def mib_unit(_values: Sequence[float]) -> Unit:
    return "MiB", 1.0, lambda v: f"{v:.1f}"


def summary(
    samples: Sequence[float],
    unit: Callable[[Sequence[float]], Unit] = seconds_unit,
    cap: float | None = None,
    note: str = "",
) -> Cell:
    """`median unit (min-max, n=N)` in one unit; inf samples (past a cap) show as `> cap`."""
    if not samples:
        raise BenchError("no samples")
    values = sorted(samples)
    name, scale, number = unit(values)

    def show(v: float) -> str:
        if math.isinf(v):
            return f"> {number(cap * scale)}" if cap is not None else "inf"
        return number(v * scale)

    median = statistics.median(values)
    text = f"{show(median)} {name}"
    if len(values) > 1:
        text += f" ({show(values[0])}{DASH}{show(values[-1])}, n={len(values)})"
    return Cell(text + (f"; {note}" if note else ""), list(values))


# -- processes ------------------------------------------------------------------------------


def _environ(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def kill_marked(token: str) -> None:
    """SIGKILL every process whose environment carries this measurement's mark."""
    needle = f"{MARK_VAR}={token}".encode()
    for _ in range(5):
        found = [
            int(pid)
            for pid in os.listdir("/proc")
            if pid.isdigit() and int(pid) != os.getpid() and needle in _environ(pid).split(b"\0")
        ]
        if not found:
            return
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d[ T][\d:.,]+\s+(leaderrun\[\d+\]\s+)?")


def last_line(text: str) -> str:
    """The last non-empty line of some output, without leaderrun's timestamp prefix."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return LOG_PREFIX.sub("", lines[-1].strip())[:120] if lines else "(no output)"


def program(argv: Sequence[str]) -> str:
    """What a tracked process runs, for messages: leaderrun, etcdctl, kazoo_lock.py..."""
    words = [str(a) for a in argv[:3]]
    if "leaderrun" in words or Path(words[0]).name == "leaderrun":
        return "leaderrun"
    script = words[1] if len(words) > 1 and words[1].endswith(".py") else words[0]
    return Path(script).name


def describe_exit(proc: TrackedPopen) -> str:
    status = proc.returncode
    return f"{program(proc.args)} exited {status}: {last_line(proc.read_stderr())}"


class Procs:
    """The processes of one measurement: marked at start, all killed on exit."""

    def __init__(self, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.registry = ProcessRegistry(log_dir)
        self.token = uuid.uuid4().hex
        env = {k: v for k, v in clean_env().items() if not k.startswith(("ETCD_", "ETCDCTL_"))}
        self.env = {**env, "ETCDCTL_API": "3", MARK_VAR: self.token}

    def start(
        self, argv: Sequence[str], name: str | None = None, new_session: bool = False
    ) -> TrackedPopen:
        return self.registry.start(argv, name=name, env=self.env, start_new_session=new_session)

    def close(self) -> None:
        self.registry.kill_all()
        kill_marked(self.token)

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    alive: Sequence[TrackedPopen] = (),
    interval: float = 0.02,
) -> Any:
    """Poll `predicate` until truthy; fail at once (one line) if a process of `alive` exits."""
    deadline = time.monotonic() + timeout
    while True:
        for proc in alive:
            if proc.poll() is not None:
                raise BenchError(f"while waiting for {what}: {describe_exit(proc)}")
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def wait_all_exit(procs: Sequence[TrackedPopen], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise BenchError(f"{what}: still running after {timeout:g}s") from None


def check_ok(procs: Sequence[TrackedPopen]) -> None:
    for proc in procs:
        if proc.returncode != 0:
            raise BenchError(describe_exit(proc))


# -- contenders -----------------------------------------------------------------------------


class Contender(Protocol):
    """A tool that runs a command while holding an election/lock, and a way to count its
    queue."""

    label: str

    def argv(
        self, name: str, command: Sequence[str], ttl: float | None = None, *opts: str
    ) -> list[str]: ...

    def queued(self, name: str) -> int: ...


@dataclass
class Leaderrun:
    store: Store
    exe: Sequence[str] = LEADERRUN_CMD
    label: str = "leaderrun"

    def argv(
        self, name: str, command: Sequence[str], ttl: float | None = None, *opts: str
    ) -> list[str]:
        ttl_opt = ("--ttl", f"{ttl:g}s") if ttl else ()
        backend = ("--backend", self.store.backend_url, "-e", name)
        return [*self.exe, *backend, *ttl_opt, *opts, "--", *command]

    def queued(self, name: str) -> int:
        return len(self.store.candidates(name))


@dataclass
class EtcdctlLock:
    cluster: EtcdCluster
    label: str = ETCDCTL_LOCK

    def argv(
        self, name: str, command: Sequence[str], ttl: float | None = None, *opts: str
    ) -> list[str]:
        # `--` is required: without it etcdctl (cobra) parses the command's own flags (sh -c).
        ttl_opt = (f"--ttl={math.ceil(ttl)}",) if ttl else ()
        lock = ("lock", *ttl_opt, *opts, f"{LOCK_PREFIX}/{name}")
        return [ETCDCTL_BIN, "--endpoints", self.cluster.endpoints, *lock, "--", *command]

    def queued(self, name: str) -> int:
        out = run_etcdctl(
            self.cluster.endpoints, "get", "--prefix", "--keys-only", f"{LOCK_PREFIX}/{name}/"
        )
        return len([line for line in out.stdout.splitlines() if line.strip()])


KAZOO_LOCK_SCRIPT = '''\
"""Run a command while holding kazoo's Lock recipe (the ZooKeeper peer of leaderrun)."""
import subprocess
import sys

from kazoo.client import KazooClient
from kazoo.recipe.lock import Lock

hosts, path, _, *command = sys.argv[1:]
client = KazooClient(hosts=hosts, timeout=10.0)
client.start(timeout=10)
try:
    with Lock(client, path):
        status = subprocess.call(command)
finally:
    client.stop()
    client.close()
sys.exit(status)
'''


@dataclass
class KazooLock:
    store: ZkStore
    script: Path
    label: str = "kazoo Lock (python)"

    @classmethod
    def create(cls, store: ZkStore, directory: Path) -> KazooLock:
        script = directory / "kazoo_lock.py"
        script.write_text(KAZOO_LOCK_SCRIPT)
        return cls(store, script)

    def argv(
        self, name: str, command: Sequence[str], ttl: float | None = None, *opts: str
    ) -> list[str]:
        hosts = self.store.ensemble.endpoints
        return [sys.executable, str(self.script), hosts, f"{PREFIX}/{name}", "--", *command]

    def queued(self, name: str) -> int:
        # kazoo's Lock names its nodes as leaderrun's ZooKeeper layout does (`...__lock__N`).
        return len(self.store.candidates(name))


PYETCD_FLOOR_SCRIPT = '''\
"""The least a Python etcd client can do per run: grant a lease, put a key on it, revoke."""
import sys

from pyetcd.client import Endpoint, MultiEndpointEtcd3Client

host, port, key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
client = MultiEndpointEtcd3Client(
    endpoints=[Endpoint(host, port, secure=False)], timeout=5, failover=True
)
lease = client.lease(10)
client.put(key, b"floor", lease=lease.id)
client.revoke_lease(lease.id)
client.close()
'''


def leaderrun_console_script() -> tuple[list[str], str]:
    """The installed `leaderrun` next to the interpreter if it works, else `python -m`."""
    script = Path(sys.executable).parent / "leaderrun"
    if script.exists():
        done = subprocess.run(
            [str(script), "--version"], capture_output=True, timeout=30, check=False,
            env=clean_env(),
        )  # fmt: skip
        if done.returncode == 0:
            return [str(script)], "console script"
    return list(LEADERRUN_CMD), "python -m leaderrun"


# -- measurements ---------------------------------------------------------------------------

QUEUE_TIMEOUT = 20.0
STALL = 15.0


def sh(script: str) -> tuple[str, ...]:
    return ("sh", "-c", script)


def has_text(path: Path) -> Callable[[], bool]:
    """A predicate: `path` exists and is not empty."""
    return lambda: path.exists() and bool(path.read_text().strip())


def queued_at_least(tool: Contender, name: str, count: int) -> Callable[[], bool]:
    return lambda: tool.queued(name) >= count


def chain(tool: Contender, name: str, work: Path, procs: Procs, n: int = 16) -> list[float]:
    """n candidates started at once; each job appends its start and end time. The first job
    waits for `go`, given once all n are queued, so that the chain measures handovers, not
    start-up. Returns the n-1 handovers (start of job k+1 - end of job k)."""
    work.mkdir(parents=True, exist_ok=True)
    starts, ends, go = work / "starts", work / "ends", work / "go"
    job = sh(
        f"date +%s.%N >> {starts}; while [ ! -e {go} ]; do sleep 0.005; done; date +%s.%N >> {ends}"
    )
    runs = [procs.start(tool.argv(name, job), name=f"chain{i}") for i in range(n)]
    wait_until(queued_at_least(tool, name, n), QUEUE_TIMEOUT, f"{n} candidates queued", runs)
    go.touch()

    def count(path: Path) -> int:
        return len(path.read_text().split()) if path.exists() else 0

    progress, last_change = count(ends), time.monotonic()
    while any(p.poll() is None for p in runs):
        done = count(ends)
        if done != progress:
            progress, last_change = done, time.monotonic()
        elif time.monotonic() - last_change > STALL:
            raise BenchError(f"chain stalled for {STALL:g}s after {done} of {n} jobs")
        time.sleep(0.02)
    check_ok(runs)
    s = sorted(float(x) for x in starts.read_text().split())
    e = sorted(float(x) for x in ends.read_text().split())
    if len(s) != n or len(e) != n:
        raise BenchError(f"{len(s)} jobs started, {len(e)} ended, of {n}")
    overlaps = [k for k in range(n - 1) if s[k + 1] < e[k]]
    if overlaps:
        raise BenchError(f"two jobs ran at once ({len(overlaps)} overlaps): not exclusive")
    return [s[k + 1] - e[k] for k in range(n - 1)]


def poll_file(path: Path, since: float, cap: float) -> float:
    """Seconds from `since` until `path` exists, polled every 2 ms; inf after `cap`."""
    while True:
        now = time.monotonic()
        if path.exists():
            return now - since
        if now - since > cap:
            return math.inf
        time.sleep(0.002)


@dataclass
class Pair:
    """A leader holding (its job sleeps) and one waiter whose job touches `started`."""

    leader: TrackedPopen
    waiter: TrackedPopen
    job_pid: int
    started: Path


def leader_and_waiter(
    tool: Contender, name: str, work: Path, procs: Procs, ttl: float | None = None
) -> Pair:
    work.mkdir(parents=True, exist_ok=True)
    pid_file, started = work / "job.pid", work / "started"
    # `exec sleep`: the job itself dies at once on SIGTERM, whichever process gets it.
    job = sh(f"echo $$ > {pid_file}.tmp && mv {pid_file}.tmp {pid_file}; exec sleep 3600")
    leader = procs.start(tool.argv(name, job, ttl), name="leader", new_session=True)
    wait_until(pid_file.exists, QUEUE_TIMEOUT, "the leader's job", [leader])
    waiter = procs.start(tool.argv(name, ("touch", str(started)), ttl), name="waiter")
    wait_until(queued_at_least(tool, name, 2), QUEUE_TIMEOUT, "the waiter queued", [leader, waiter])
    return Pair(leader, waiter, int(pid_file.read_text()), started)


def sigterm_handover(tool: Contender, name: str, work: Path, procs: Procs) -> float:
    pair = leader_and_waiter(tool, name, work, procs)
    since = time.monotonic()
    os.killpg(pair.leader.pid, signal.SIGTERM)
    took = poll_file(pair.started, since, STALL)
    if math.isinf(took):
        raise BenchError(f"no handover within {STALL:g}s of SIGTERM")
    wait_all_exit([pair.leader, pair.waiter], 30, "after the handover")
    return took


def sigkill_handovers(pairs: Sequence[Pair], cap: float) -> list[tuple[float, bool]]:
    """SIGKILL each pair's leader (the tool's main pid only), all at once; per pair, seconds
    until the waiter's child ran (inf past `cap`) and whether the killed leader's job was
    still running at that moment (or at the cap)."""
    sent: list[float] = []
    for pair in pairs:
        sent.append(time.monotonic())
        os.kill(pair.leader.pid, signal.SIGKILL)
    results: list[tuple[float, bool] | None] = [None] * len(pairs)
    while any(r is None for r in results):
        now = time.monotonic()
        for i, pair in enumerate(pairs):
            if results[i] is not None:
                continue
            if pair.started.exists():
                results[i] = (now - sent[i], alive(pair.job_pid))
            elif now - sent[i] > cap:
                results[i] = (math.inf, alive(pair.job_pid))
        time.sleep(0.002)
    return [r for r in results if r is not None]


def fifty(
    tool: Contender, name: str, procs: Procs, n: int = 50, cap: float = 120, *opts: str
) -> float:
    """Wall time from starting the first of n candidates (job `sleep 0.2`) to the last exit."""
    since = time.monotonic()
    argv = tool.argv(name, ("sleep", "0.2"), None, *opts)
    runs = [procs.start(argv, name=f"c{i}") for i in range(n)]
    pending, last_change = set(range(n)), time.monotonic()
    while pending:
        now = time.monotonic()
        finished = {i for i in pending if runs[i].poll() is not None}
        if finished:
            pending -= finished
            last_change = now
        elif now - last_change > STALL:
            raise BenchError(f"no candidate exited for {STALL:g}s ({n - len(pending)} of {n} done)")
        elif now - since > cap:
            raise BenchError(f"not done after {cap:g}s ({n - len(pending)} of {n} done)")
        if pending:
            time.sleep(0.005)
    took = last_change - since
    check_ok(runs)
    return took


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_runs(
    argv_for: Callable[[int], Sequence[str]], procs: Procs, rounds: int
) -> tuple[list[float], list[float]]:
    """Wall and CPU (user+sys of the process and everything it reaped) of `rounds` runs."""
    walls, cpus = [], []
    for i in range(rounds):
        cpu0, t0 = children_cpu(), time.monotonic()
        proc = procs.start(argv_for(i), name=f"run{i}")
        # Popen.wait(timeout) polls with sleeps of up to 50 ms: wait on a pidfd instead.
        pidfd = os.pidfd_open(proc.pid)
        try:
            if not select.select([pidfd], [], [], QUEUE_TIMEOUT)[0]:
                raise BenchError(f"still running after {QUEUE_TIMEOUT:g}s")
        finally:
            os.close(pidfd)
        walls.append(time.monotonic() - t0)
        proc.wait()
        cpus.append(children_cpu() - cpu0)
        check_ok([proc])
    return walls, cpus


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def tree(pid: int, exclude: int | None = None) -> list[int]:
    """`pid` and its live descendants, without `exclude` and its own descendants."""
    skip = {exclude, *descendants(exclude)} if exclude is not None else set()
    return [p for p in [pid, *descendants(pid)] if p not in skip]


def cpu_ticks(pids: Sequence[int]) -> int:
    """utime+stime of each process plus what it reaped (cutime+cstime), in clock ticks."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            # After the command name: state is field 3, utime..cstime are fields 14-17.
            total += sum(int(v) for v in fields[11:15])
    return total


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * KB_TO_MIB
    raise BenchError(f"no VmRSS for pid {pid}")


def worker_of(guard: int) -> int:
    """The guard's child that runs the same interpreter (leaderrun's worker)."""
    exe = os.readlink(f"/proc/{guard}/exe")
    for pid in descendants(guard):
        fields = _stat(pid)
        if fields is None or int(fields[1]) != guard:
            continue
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/exe") == exe:
                return pid
    raise BenchError(f"no worker process under leaderrun pid {guard}")


@contextlib.contextmanager
def cell_procs(work: Path, label: str) -> Iterator[Procs]:
    with Procs(work / "logs" / label) as procs:
        yield procs
