"""Running `leaderrun` under test: start it against a store, wait for it, small shell jobs."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Protocol

from helpers import LEADERRUN_CMD, ProcessRegistry, TrackedPopen, wait_for


class HasBackendURL(Protocol):
    """A store probe or a server fixture: anything that knows leaderrun's --backend URL."""

    @property
    def backend_url(self) -> str: ...


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
) -> TrackedPopen:
    """`leaderrun -v --backend <store> -e <election> OPTS -- COMMAND` as a tracked process."""
    argv = [*LEADERRUN_CMD, "--backend", store.backend_url, "-e", election, "-v", *opts]
    return processes.start([*argv, "--", *command], name=name)


def wait_exit(proc: TrackedPopen, timeout: float = 30) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"leaderrun did not exit; stderr:\n{proc.read_stderr()}") from None


def sh(script: str) -> tuple[str, ...]:
    return ("sh", "-c", script)


def long_job(tmp_path: Path, ignore_term: bool = True) -> tuple[tuple[str, ...], Path, Path]:
    """A child that writes its pid and runs until `done` exists (ignoring SIGTERM if asked)."""
    pid_file, done = tmp_path / "pid", tmp_path / "done"
    trap = "trap '' TERM; " if ignore_term else ""
    job = sh(f"{trap}echo $$ > {pid_file}; while [ ! -e {done} ]; do sleep 0.05; done")
    return job, pid_file, done


def child_pid(pid_file: Path, timeout: float = 20) -> int:
    """The pid the child wrote, once it did."""
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout, message="child")
    return int(pid_file.read_text())
