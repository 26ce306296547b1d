"""Backend-neutral helpers for tests that drive leaderrun: they look at the election only through
`leaderrun status --json`, so the same test runs on every backend."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Protocol

from helpers import LEADERRUN_CMD, ProcessRegistry, TrackedPopen, clean_env


class Store(Protocol):
    """What a test needs of a running store: where leaderrun reaches it."""

    @property
    def backend_url(self) -> str: ...


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def sh(script: str) -> tuple[str, ...]:
    return ("sh", "-c", script)


def start_run(
    processes: ProcessRegistry,
    store: Store,
    election: str,
    *command: str,
    opts: tuple[str, ...] = (),
    name: str | None = None,
    env: dict[str, str] | None = None,
) -> TrackedPopen:
    argv = [*LEADERRUN_CMD, "--backend", store.backend_url, "-e", election, *opts]
    kwargs: dict[str, Any] = {"env": clean_env(env)} if env else {}
    return processes.start([*argv, "--", *command], name=name, **kwargs)


def wait_exit(proc: TrackedPopen, timeout: float = 30) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"leaderrun did not exit; stderr:\n{proc.read_stderr()}") from None


def status(store: Store, election: str | None = None, *opts: str) -> tuple[int, Any]:
    """`leaderrun status --json`: its exit code and parsed document (None if not JSON)."""
    argv = [*LEADERRUN_CMD, "status", "--backend", store.backend_url, "--json", *opts]
    done = subprocess.run(
        [*argv, *([election] if election else [])],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
        check=False,
    )
    try:
        return done.returncode, json.loads(done.stdout)
    except json.JSONDecodeError:
        return done.returncode, None


def election_view(store: Store, election: str) -> dict[str, Any]:
    code, document = status(store, election)
    assert code in (0, 3), f"status failed with {code}"
    view: dict[str, Any] = document["elections"][0]
    return view


def queue_ids(store: Store, election: str) -> list[str]:
    """Identities in the queue, leader first."""
    view = election_view(store, election)
    members = ([view["leader"]] if view["leader"] else []) + view["waiting"]
    return [m["id"] for m in members]


def queued(store: Store, election: str, count: int) -> bool:
    return len(queue_ids(store, election)) >= count
