"""Running `leaderrun` under test: start it against a store, wait for it, ask it for `status`
and `step-down`, small shell jobs. Backend-neutral: nothing here knows etcd from ZooKeeper."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from helpers import LEADERRUN_CMD, ProcessRegistry, TrackedPopen, clean_env, wait_for
from stores import Store


class HasBackendURL(Protocol):
    """A store probe or a server fixture: anything that knows leaderrun's --backend URL."""

    @property
    def backend_url(self) -> str: ...


class URL(NamedTuple):
    """Just a --backend URL, e.g. one where no server listens."""

    backend_url: str


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def start(
    processes: ProcessRegistry,
    store: HasBackendURL,
    election: str,
    *command: str,
    opts: tuple[str, ...] = (),
    name: str | None = None,
    env: dict[str, str] | None = None,
    verbose: int = 1,
) -> TrackedPopen:
    """`leaderrun --backend <store> -e <election> [-v...] OPTS -- COMMAND` as a tracked process.

    `verbose` is the number of `-v` flags. The default 1 logs every state change, which the
    tests read ("waiting behind ...") and which explains a failure; pass 0 to see leaderrun's
    default quiet output, or to let `LEADERRUN_VERBOSE` in `env` decide (a flag would win).
    `env` is added to the clean test environment (`helpers.clean_env`).
    """
    flags = ("-" + "v" * verbose,) if verbose > 0 else ()
    argv = [*LEADERRUN_CMD, "--backend", store.backend_url, "-e", election, *flags, *opts]
    return processes.start([*argv, "--", *command], name=name, env=clean_env(env))


#: leaderrun's -v line when its ZooKeeper client moved to another member.
RECONNECTED = re.compile(r"reconnected to ZooKeeper after (\d+\.\d+)s \(member ([^)]+)\)")


def wait_reconnected(
    proc: TrackedPopen, since: float, timeout: float, message: str
) -> tuple[re.Match[str], float]:
    """The `RECONNECTED` line `proc` logged (member in group 2), and the seconds from `since`
    (monotonic) until it was seen."""
    wait_for(
        lambda: RECONNECTED.search(proc.read_stderr()) or proc.poll() is not None,
        timeout,
        interval=0.01,
        message=message,
    )
    seen_after = time.monotonic() - since
    found = RECONNECTED.search(proc.read_stderr())
    assert found is not None, proc.read_stderr()
    return found, seen_after


def wait_exit(proc: TrackedPopen, timeout: float = 30) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"leaderrun did not exit; stderr:\n{proc.read_stderr()}") from None


def sh(script: str) -> tuple[str, ...]:
    return ("sh", "-c", script)


def long_job(
    tmp_path: Path, ignore_term: bool = True, name: str = ""
) -> tuple[tuple[str, ...], Path, Path]:
    """A child that writes its pid and runs until `done` exists (ignoring SIGTERM if asked).
    Returns (job, pid file, done file); `name` keeps several jobs' files apart."""
    suffix = f"-{name}" if name else ""
    pid_file, done = tmp_path / f"pid{suffix}", tmp_path / f"done{suffix}"
    trap = "trap '' TERM; " if ignore_term else ""
    job = sh(f"{trap}echo $$ > {pid_file}; while [ ! -e {done} ]; do sleep 0.05; done")
    return job, pid_file, done


def child_pid(pid_file: Path, timeout: float = 20) -> int:
    """The pid the child wrote, once it did."""
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout, message="child")
    return int(pid_file.read_text())


def operator(store: HasBackendURL, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`leaderrun status|step-down --backend <store> ARGS`, output captured as text."""
    argv = [*LEADERRUN_CMD, command, "--backend", store.backend_url, *args]
    return subprocess.run(
        argv, env=clean_env(), capture_output=True, text=True, timeout=60, check=False
    )


def status(store: HasBackendURL, election: str | None = None, *opts: str) -> tuple[int, Any]:
    """`leaderrun status --json`: its exit code and parsed document (None if not JSON)."""
    done = operator(store, "status", "--json", *opts, *([election] if election else []))
    try:
        return done.returncode, json.loads(done.stdout)
    except json.JSONDecodeError:
        return done.returncode, None


def queue_ids(store: Store, election: str) -> list[str]:
    """Identities in the queue as the store holds it, leader first."""
    return [c.identity for c in store.candidates(election)]


def handover(
    processes: ProcessRegistry, store: Store, election: str, tmp_path: Path, signum: int
) -> float:
    """Seconds from sending `signum` to the leader's leaderrun (its child exits at once on
    SIGTERM) to the next candidate's child running, both with a 60 s TTL, so that only a
    release (not an expiry) can explain a short handover. Both have exited on return."""
    ready, started = tmp_path / "ready", tmp_path / "started"
    for path in (ready, started):
        path.unlink(missing_ok=True)
    first = sh(f"touch {ready}; while :; do sleep 0.05; done")
    a = start(processes, store, election, *first, opts=("--ttl", "60s"), name="a")
    wait_for(ready.exists, 15, message="first child running")
    b = start(processes, store, election, "touch", str(started), opts=("--ttl", "60s"), name="b")
    wait_for(lambda: store.queued(election, 2), 15, message="two candidates queued")

    signalled = time.monotonic()
    a.send_signal(signum)
    wait_for(started.exists, 15, interval=0.005, message="next child started")
    took = time.monotonic() - signalled
    assert wait_exit(b) == 0
    wait_exit(a)
    return took


def safety(ttl: float) -> float:
    """The timing rule's margin (SPEC §3): max(0.5 s, T/20)."""
    return max(0.5, ttl / 20)


def freeze_until_dead(store: Store, child: int, ttl: float, frozen_for: float = 0.0) -> float:
    """SIGSTOP the store's (first) server until `child` is dead, and for at least `frozen_for`
    seconds, then SIGCONT it. Returns how long before `freeze + ttl - safety` the child was
    seen dead: no renewal is answered after the freeze, so the server could expire the
    lease/session at `freeze + ttl` at the earliest. Negative means too late."""
    member = store.members[0]
    frozen_at = time.monotonic()
    member.freeze()
    try:
        wait_for(lambda: not alive(child), ttl + 5, interval=0.005, message="child stopped")
        margin = frozen_at + ttl - safety(ttl) - time.monotonic()
        wait_for(lambda: time.monotonic() >= frozen_at + frozen_for, frozen_for + 5)
    finally:
        member.thaw()
    return margin
