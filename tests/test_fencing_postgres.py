"""The fencing token against a real PostgreSQL: the one case no wrapper can cover.

Leader A's job *and* its leaderrun are frozen together (SIGSTOP of the whole tree: a VM freeze,
a paused container). A's lease expires, B is elected and writes. A's job is resumed first (the
moment before its wrapper can react) and tries to write: the database refuses it, because the
fence row already holds B's higher token (examples/fenced-postgres).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ProcessRegistry, descendants, wait_for
from runs import alive, sh, start, wait_exit
from servers import EtcdCluster, PostgresServer, postgres_bindir

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fenced-postgres"
WRITE = EXAMPLE / "fenced-write.sh"

pytestmark = pytest.mark.skipif(postgres_bindir() is None, reason="postgresql not installed")


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _psql(pg: PostgresServer, sql: str) -> str:
    done = subprocess.run(
        ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", pg.dsn, "-c", sql],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def _pg_env(pg: PostgresServer) -> dict[str, str]:
    return {"PGHOST": "127.0.0.1", "PGPORT": str(pg.port), "PGUSER": "postgres",
            "PGDATABASE": "postgres", "WRITE": str(WRITE)}  # fmt: skip


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.timeout(90)
def test_paused_ex_leader_cannot_write(
    postgres: PostgresServer, etcd: EtcdCluster, election: str, processes: ProcessRegistry,
    tmp_path: Path,
) -> None:  # fmt: skip
    _psql(postgres, (EXAMPLE / "schema.sql").read_text())
    env = _pg_env(postgres)
    ready_a, go_a, result_a, done_b = (tmp_path / n for n in ("ready-a", "go-a", "result-a", "b"))
    job_a = sh(
        f'"$WRITE" payments first-a && touch {ready_a}; '
        f"while [ ! -e {go_a} ]; do sleep 0.05; done; "
        f'"$WRITE" payments second-a; echo $? > {result_a}; sleep 600'
    )
    opts = ("--ttl", "5s", "--kill-grace", "1s")
    a = start(processes, etcd, election, *job_a, opts=opts, name="a", env=env)
    wait_for(ready_a.exists, 20, message="A's first write")
    token_a = int(_psql(postgres, "SELECT token FROM fence WHERE resource = 'payments'"))

    # Freeze the whole host of A: leaderrun (guard and worker) and everything its job runs.
    frozen: list[int] = []
    for _ in range(3):  # again, for anything forked meanwhile
        pids = [a.pid, *descendants(a.pid)]
        _signal_all([p for p in pids if p not in frozen], signal.SIGSTOP)
        frozen = sorted(set(frozen) | set(pids))
    job_pids = [p for p in frozen if _cmdline(p) != _cmdline(a.pid)]
    wrapper_pids = [p for p in frozen if p not in job_pids]
    assert len(wrapper_pids) == 2, "expected leaderrun's guard and worker"

    try:
        b = start(processes, etcd, election, *sh(f'"$WRITE" payments b && touch {done_b}'),
                  opts=opts, name="b", env=env)  # fmt: skip
        wait_for(done_b.exists, 30, message="B elected after A's lease expired, and wrote")
        assert wait_exit(b) == 0
        token_b = int(_psql(postgres, "SELECT token FROM fence WHERE resource = 'payments'"))
        assert token_b > token_a

        # A's job wakes first (its wrapper has not yet noticed) and tries to write.
        go_a.touch()
        _signal_all(job_pids, signal.SIGCONT)
        wait_for(result_a.exists, 20, message="A's second write attempt")
        assert result_a.read_text().strip() == "3", "the database accepted a stale leader"
    finally:
        _signal_all(wrapper_pids, signal.SIGCONT)

    # The resumed wrapper finds its deadline passed: it stops A's job and does not keep it.
    code = wait_exit(a)
    assert code == 75, a.read_stderr()
    assert not any(alive(p) for p in job_pids)

    rows = _psql(postgres, "SELECT token, note FROM ledger ORDER BY id").splitlines()
    assert rows == [f"{token_a}|first-a", f"{token_b}|b"], rows
    assert _psql(postgres, "SELECT token FROM fence") == str(token_b)
