"""The nemesis: K candidates around the recording job (job.py), a seeded stream of faults, and
the checker's report at the end.

Everything runs in the caller's (main) thread: servers restarted here are started with
PR_SET_PDEATHSIG, which fires when the *thread* that forked them exits.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from helpers import LEADERRUN_CMD, clean_env, descendants
from servers import ETCDCTL_BIN, EtcdCluster, ZkEnsemble, _server_env

from nemesis import checker
from nemesis.checker import Fault, Result

JOB = Path(__file__).with_name("job.py")
REPO = Path(__file__).resolve().parents[2]
REPORT_DIR = Path(os.environ.get("CHAOS_REPORT_DIR", REPO / "chaos-report"))

#: Fault types and their default weights.
CANDIDATE_FAULTS = ("kill-leaderrun", "stop-worker", "stop-guard")
STORE_FAULTS = ("stop-member", "restart-member", "kill-store-leader")
PARTITION_FAULTS = ("partition-silent", "partition-reset")
#: Freezing guard *and* worker while the job runs on is outside what any wrapper can cover
#: (nothing of leaderrun runs to stop the job): only fencing helps. Opt in with CHAOS_FAULTS.
OUT_OF_CONTRACT = ("stop-leaderrun",)
DEFAULT_FAULTS = CANDIDATE_FAULTS + STORE_FAULTS


def faults_from_env(default: Sequence[str] = DEFAULT_FAULTS) -> tuple[str, ...]:
    value = os.environ.get("CHAOS_FAULTS", "")
    return tuple(v for v in value.split(",") if v) or tuple(default)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _signal(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _die_with_parent() -> None:
    import servers

    servers._die_with_parent()


class StoreAdapter:
    """What the nemesis needs of an etcd cluster or a ZooKeeper ensemble."""

    def __init__(self, store: EtcdCluster | ZkEnsemble) -> None:
        self.store = store
        self.name = "etcd" if isinstance(store, EtcdCluster) else "zk"

    @property
    def members(self) -> list:  # type: ignore[type-arg]
        return list(self.store.members)

    @property
    def backend_url(self) -> str:
        return self.store.backend_url

    def leader(self):  # type: ignore[no-untyped-def]
        if isinstance(self.store, EtcdCluster):
            return self.store.raft_leader()
        return self.store.leader()


@dataclass
class Candidate:
    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    frozen: list[int] = field(default_factory=list)
    exited_at: float | None = None

    def start(self, env: dict[str, str]) -> None:
        with self.log.open("ab") as log:
            log.write(f"\n=== nemesis: starting {self.name} at {time.monotonic():.3f}\n".encode())
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        self.exited_at = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def guard(self) -> list[int]:
        return [self.proc.pid] if self.alive() and self.proc else []

    def workers(self) -> list[int]:
        """Descendants running the same program as the pid we started (leaderrun's forked
        worker), not the job."""
        if not self.alive() or self.proc is None:
            return []
        me = _cmdline(self.proc.pid)
        return [d for d in descendants(self.proc.pid) if _cmdline(d) == me]


@dataclass
class Nemesis:
    store: StoreAdapter
    workdir: Path
    seed: str
    seconds: float
    faults: Sequence[str] = DEFAULT_FAULTS
    k: int = 3
    #: `--max-holders` of the candidates (the checker then applies the semaphore's rule)
    holders: int = 1
    command: str = "leaderrun"  # or "etcdctl-lock"
    ttl: int = 5
    kill_grace: str = "1s"
    election: str = "nemesis"
    #: pause between faults (s), and how long a stop / partition lasts (s)
    pause: tuple[float, float] = (2.0, 5.0)
    hold: tuple[float, float] = (2.0, 12.0)
    down: tuple[float, float] = (1.0, 5.0)
    #: candidate faults hit the current leader with this probability (else anyone)
    aim_at_leader: float = 0.7
    backend_for: Callable[[str], str] | None = None
    partitioner: Callable[[str, str], Callable[[], None]] | None = None
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(f"nemesis:{self.seed}")
        self.records = self.workdir / "records"
        self.records.mkdir(parents=True, exist_ok=True)
        self.fault_log: list[Fault] = []
        self.candidates = [
            Candidate(f"c{i}", self._argv(f"c{i}"), self.workdir / f"c{i}.log")
            for i in range(self.k)
        ]

    # -- commands --------------------------------------------------------------------------
    def _job(self, name: str) -> list[str]:
        return [sys.executable, "-I", str(JOB), str(self.records), name, self.seed]

    def _argv(self, name: str) -> list[str]:
        url = self.backend_for(name) if self.backend_for else self.store.backend_url
        if self.command == "etcdctl-lock":
            endpoints = url.split("://", 1)[1]
            return [ETCDCTL_BIN, f"--endpoints={endpoints}", "lock", f"--ttl={self.ttl}",
                    self.election, "--", *self._job(name)]  # fmt: skip
        holders = ("--max-holders", str(self.holders)) if self.holders > 1 else ()
        return [*LEADERRUN_CMD, "--backend", url, "-e", self.election, "--id", name,
                "--forever", "--ttl", f"{self.ttl}s", "--kill-grace", self.kill_grace,
                "--restart-delay", "0.5s", *holders, "-v", "--", *self._job(name)]  # fmt: skip

    def _env(self) -> dict[str, str]:
        if self.command == "etcdctl-lock":
            env = _server_env()
            env["ETCDCTL_API"] = "3"
            return env
        env = clean_env()
        env.setdefault("PYTHONPATH", str(REPO))
        return env

    # -- who leads -------------------------------------------------------------------------
    def leader_candidate(self) -> Candidate | None:
        """The candidate whose job wrote a record within the last 0.3 s."""
        now = time.time()
        best: tuple[float, str] | None = None
        for p in self.records.iterdir():
            if not p.name.endswith(".child"):
                continue
            with contextlib.suppress(OSError):
                m = p.stat().st_mtime
                if now - m < 0.3 and (best is None or m > best[0]):
                    best = (m, p.name.split(".", 1)[0])
        return next((c for c in self.candidates if best and c.name == best[1]), None)

    def _pick_candidate(self) -> Candidate:
        leader = self.leader_candidate()
        if leader is not None and self.rng.random() < self.aim_at_leader:
            return leader
        return self.rng.choice(self.candidates)

    # -- faults ----------------------------------------------------------------------------
    def _begin(self, kind: str) -> tuple[Fault, Callable[[], None], float]:
        """Inject `kind`; return the fault, its undo action and how long until undoing it."""
        now = time.monotonic()
        if kind in CANDIDATE_FAULTS + OUT_OF_CONTRACT:
            c = self._pick_candidate()
            if kind == "kill-leaderrun":
                _signal(c.guard(), signal.SIGKILL)
                return Fault(kind, c.name, now, now), lambda: None, 0.0
            pids = {"stop-worker": c.workers(), "stop-guard": c.guard(),
                    "stop-leaderrun": c.guard() + c.workers()}[kind]  # fmt: skip
            _signal(pids, signal.SIGSTOP)
            c.frozen = pids
            hold = self.rng.uniform(*self.hold)

            def thaw() -> None:
                _signal(c.frozen, signal.SIGCONT)
                c.frozen = []

            return Fault(kind, c.name, now, now + hold, f"pids {pids}"), thaw, hold
        if kind in PARTITION_FAULTS:
            assert self.partitioner is not None, "partitions need per-candidate proxies"
            c = self.rng.choice(self.candidates)
            if self.rng.random() < self.aim_at_leader:
                c = self._pick_candidate()
            hold = self.rng.uniform(*self.hold)
            heal = self.partitioner(c.name, kind)
            return Fault(kind, c.name, now, now + hold), heal, hold
        members = self.store.members
        if kind == "stop-member":
            m = self.rng.choice(members)
            if m.is_running():
                m.freeze()
            hold = self.rng.uniform(*self.hold)

            def thaw_member() -> None:
                if m.is_running() and m.frozen:
                    m.thaw()

            return Fault(kind, m.name, now, now + hold), thaw_member, hold
        if kind in ("restart-member", "kill-store-leader"):
            if kind == "kill-store-leader":
                try:
                    m = self.store.leader()
                except RuntimeError:
                    m = self.rng.choice(members)
            else:
                m = self.rng.choice(members)
            now = time.monotonic()
            m.kill()
            down = self.rng.uniform(*self.down)

            def restart() -> None:
                if not m.is_running():
                    m.start(wait=False)

            return Fault(kind, m.name, now, now + down), restart, down
        raise ValueError(f"unknown fault {kind!r}")

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> Result:
        env = self._env()
        for c in self.candidates:
            c.start(env)
        t0 = time.monotonic()
        end = t0 + self.seconds
        next_fault = t0 + 3.0  # let a first leader settle
        undo: Callable[[], None] | None = None
        undo_at = 0.0
        try:
            while True:
                now = time.monotonic()
                for c in self.candidates:
                    if c.proc is not None and c.proc.poll() is not None and not c.frozen:
                        if c.exited_at is None:
                            c.exited_at = now
                            self.log.append(f"+{now - t0:.2f} {c.name} exited {c.proc.returncode}")
                        elif now - c.exited_at > 0.5 and now < end:
                            c.restarts += 1
                            c.start(env)
                if undo is not None and now >= undo_at:
                    undo()
                    undo = None
                    next_fault = time.monotonic() + self.rng.uniform(*self.pause)
                if now >= end:
                    break
                if undo is None and now >= next_fault:
                    kind = self.rng.choice(list(self.faults))
                    fault, action, hold = self._begin(kind)
                    self.fault_log.append(fault)
                    self.log.append(f"+{fault.start - t0:.2f} {kind} {fault.target} {hold:.1f}s")
                    undo, undo_at = action, time.monotonic() + hold
                    if hold <= 0:
                        undo()
                        undo = None
                        next_fault = time.monotonic() + self.rng.uniform(*self.pause)
                time.sleep(0.05)
        finally:
            if undo is not None:
                undo()
            t1 = time.monotonic()
            self.shutdown()
        return checker.check(
            checker.load(self.records), self.fault_log, t0, t1,
            seed=self.seed, backend=self.store.name, command=self.command, holders=self.holders,
        )  # fmt: skip

    def shutdown(self) -> None:
        """Thaw everything, stop the candidates, kill any job left (etcdctl lock leaves some)."""
        for c in self.candidates:
            _signal(c.frozen, signal.SIGCONT)
            c.frozen = []
        for m in self.store.members:
            if m.is_running() and m.frozen:
                m.thaw()
        # leaderrun stops its job and releases on SIGTERM; etcdctl lock would wait for its
        # command, which the harness kills below anyway.
        sig = signal.SIGKILL if self.command == "etcdctl-lock" else signal.SIGTERM
        for c in self.candidates:
            if c.alive() and c.proc is not None:
                _signal([c.proc.pid], sig)
        deadline = time.monotonic() + 15
        for c in self.candidates:
            if c.proc is None:
                continue
            try:
                c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(c.proc.pid, signal.SIGKILL)
                c.proc.kill()
                c.proc.wait(timeout=5)
        self.kill_leftover_jobs()

    def kill_leftover_jobs(self) -> list[int]:
        marker = str(self.records).encode()
        killed = []
        for life in checker.load(self.records):
            if marker in _cmdline(life.pid) and str(JOB).encode() in _cmdline(life.pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(life.pid, signal.SIGKILL)
                    killed.append(life.pid)
        return killed

    def report(self, result: Result, name: str) -> str:
        (self.workdir / "nemesis.log").write_text("\n".join(self.log) + "\n")
        return checker.write_report(result, REPORT_DIR, name, [c.name for c in self.candidates])


def chaos_seconds(default: float) -> float:
    return float(os.environ.get("CHAOS_SECONDS", default))


def chaos_seed() -> str:
    return os.environ.get("CHAOS_SEED") or str(random.SystemRandom().randrange(1, 10**6))
