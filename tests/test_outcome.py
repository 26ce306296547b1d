"""Every run's outcome (issue 13): recorded after the release, compare-and-set on the fencing
token at `<prefix>/@last-run/<election>`, shown by `status` for elections without a leader.
`--once-per` keeps its own record of successful runs only. On every backend."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import ProcessRegistry, wait_for
from kazoo.exceptions import NoAuthError
from runs import child_pid, long_job, operator, sh, start, status, wait_exit
from servers import ZkEnsemble
from stores import PREFIX, Store, ZkStore

from leaderrun import operate
from leaderrun.backends import Backend, backend_class
from leaderrun.record import outcome_record
from leaderrun.settings import Settings, build_timing, parse_backend_url


def last_outcome(store: Store, election: str) -> Any:
    code, document = status(store, election)
    assert document is not None and document["schema_minor"] == 4
    return code, document["elections"][0]["last_outcome"]


def test_a_failed_run_is_shown_then_replaced_by_the_next_run(
    store: Store, election: str, processes: ProcessRegistry
) -> None:
    failing = start(processes, store, election, *sh("sleep 0.3; exit 3"), opts=("--id", "node-a"))
    assert wait_exit(failing) == 3
    code, outcome = last_outcome(store, election)
    assert code == 3  # no leader
    assert outcome["foreign"] is False
    assert outcome["id"] == "node-a" and outcome["host"]
    assert outcome["status"] == 3 and outcome["ended"] == "exited"
    assert 0.3 <= outcome["duration"] < 10
    assert isinstance(outcome["token"], int) and outcome["token"] > 0
    assert abs(datetime.fromisoformat(outcome["start"]).timestamp() - time.time()) < 30

    plain = operator(store, "status", election).stdout.splitlines()
    line = next(line for line in plain if "last run" in line)
    assert line.startswith("  last run ") and " by node-a: exit 3 after " in line
    assert line.endswith(" s") and all(len(text) <= 80 for text in plain)

    passing = start(processes, store, election, "true", opts=("--id", "node-b"))
    assert wait_exit(passing) == 0
    code, newer = last_outcome(store, election)
    assert newer["id"] == "node-b" and newer["status"] == 0 and newer["ended"] == "exited"
    assert newer["token"] > outcome["token"]
    assert ": exit 0 after " in operator(store, "status", election).stdout


def test_once_per_still_counts_only_successes(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    opts = ("--once-per", "1h")
    failing = start(processes, store, election, *sh(f"echo x >> {journal}; exit 3"), opts=opts)
    assert wait_exit(failing) == 3
    _, document = status(store, election)
    assert document["elections"][0]["last_run"] is None  # a failed run does not count
    assert document["elections"][0]["last_outcome"]["status"] == 3

    again = start(processes, store, election, *sh(f"echo x >> {journal}"), opts=opts)
    assert wait_exit(again) == 0
    skipped = start(processes, store, election, *sh(f"echo x >> {journal}"), opts=opts)
    assert wait_exit(skipped) == 0
    assert journal.read_text().split() == ["x", "x"]
    _, document = status(store, election)
    last_run, outcome = (
        document["elections"][0]["last_run"],
        document["elections"][0]["last_outcome"],
    )
    # The skipped term ran nothing, so recorded nothing: the outcome is the successful run's.
    assert outcome["status"] == 0 and outcome["token"] == last_run["token"]


def test_lost_leadership_is_recorded_as_such(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    job, pid_file, _ = long_job(tmp_path, ignore_term=False)
    proc = start(processes, store, election, *job, opts=("--ttl", "6s", "--kill-grace", "1s"))
    child_pid(pid_file)
    store.delete_candidates(election)
    assert wait_exit(proc) == 75
    _, outcome = last_outcome(store, election)
    assert outcome["ended"] == "lost" and outcome["status"] == 128 + signal.SIGTERM
    line = next(
        x for x in operator(store, "status", election).stdout.splitlines() if "last run" in x
    )
    assert "killed by SIGTERM after" in line and line.endswith(", leadership lost")


def test_an_idle_max_holders_election_still_shows_its_slots(
    store: Store, election: str, processes: ProcessRegistry
) -> None:
    """Nobody is queued once the last holder has gone, so N comes from the last outcome: the
    election is shown as "0 of 2 slots held", not as a one-leader election. The plain
    N = 1 record says nothing of slots."""
    single = start(processes, store, election, "true", opts=("--id", "node-one"))
    assert wait_exit(single) == 0
    _, document = status(store, election)
    assert document["elections"][0]["max_holders"] == 1
    assert document["elections"][0]["last_outcome"]["slot"] is None

    opts = ("--max-holders", "2", "--id", "node-two")
    proc = start(processes, store, election, *sh("exit 5"), opts=opts)
    assert wait_exit(proc) == 5
    code, document = status(store, election)
    assert code == 3  # nobody holds a slot
    shown = document["elections"][0]
    assert shown["max_holders"] == 2 and shown["holders"] == [] and shown["leader"] is None
    assert shown["last_outcome"]["id"] == "node-two" and shown["last_outcome"]["slot"] == 0
    plain = operator(store, "status", election).stdout.splitlines()
    assert plain[0] == f"{election}: 0 of 2 slots held", plain
    assert " by node-two: exit 5 after " in plain[1], plain


def test_a_command_that_cannot_be_executed_is_recorded_too(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """Found and executable, but the exec fails (a script without `#!`): exit 126, recorded."""
    script = tmp_path / "no-shebang"
    script.write_text("exit 3\n")
    script.chmod(0o755)
    proc = start(processes, store, election, str(script), opts=("--id", "node-x"))
    assert wait_exit(proc) == 126
    _, outcome = last_outcome(store, election)
    assert outcome["id"] == "node-x" and outcome["status"] == 126
    assert outcome["ended"] == "exited" and outcome["duration"] == 0


def test_forever_records_each_terms_outcome(
    store: Store, election: str, processes: ProcessRegistry
) -> None:
    opts = ("--forever", "--restart-delay", "60s")
    proc = start(processes, store, election, *sh("exit 4"), opts=opts)
    outcome = wait_for(lambda: last_outcome(store, election)[1], 20, message="outcome recorded")
    assert outcome["status"] == 4 and outcome["ended"] == "exited"
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc) == 0


# -- the backend method, called directly -----------------------------------------------------------


@contextmanager
def backend_for(store: Store, election: str) -> Iterator[Backend]:
    settings = Settings(
        backend=parse_backend_url(store.backend_url),
        election=election,
        prefix=PREFIX,
        identity="unit",
        timing=build_timing(ttl=10.0, kill_grace=1.0, renew_interval=None),
        connect_timeout=5.0,
        command=("true",),
    )
    backend = backend_class(settings.backend.scheme)(settings)
    try:
        backend.connect()
        yield backend
    finally:
        backend.close()


def test_an_older_terms_outcome_never_replaces_a_newer_one(store: Store, election: str) -> None:
    newer = outcome_record(200, "node-new", 1_700_000_000.0, 1.5, 0, "exited")
    older = outcome_record(100, "node-old", 1_600_000_000.0, 9.0, 3, "exited")
    newest = outcome_record(300, "node-newest", 1_800_000_000.0, 2.0, 1, "lost")
    with backend_for(store, election) as backend:
        assert backend.record_outcome(election, 200, newer) is True
        assert backend.record_outcome(election, 100, older) is False
        assert backend.record_outcome(election, 200, newer) is False  # written already
        assert backend.view(election).outcome == newer
        assert backend.record_outcome(election, 300, newest) is True
        assert backend.view(election).outcome == newest
        # An election with only an outcome is listed, and has no candidate.
        assert election in backend.elections()
        assert backend.view(election).candidates == ()
    code, everything = status(store)
    assert code == 3
    shown = next(e for e in everything["elections"] if e["name"] == election)
    assert shown["leader"] is None and shown["last_outcome"]["token"] == 300
    assert shown["last_outcome"]["ended"] == "lost"
    assert all(not e["name"].startswith("@") for e in everything["elections"])


def test_zk_outcome_node_carries_the_auth_files_acl(
    zk: ZkEnsemble, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """With --zk-auth-file the outcome node gets the elections' ACL: anyone may read it (status
    works), only that identity may change it."""
    auth = tmp_path / "zk-auth"
    auth.write_text("jobs:s3cret-pw\n")
    auth.chmod(0o600)
    with ZkStore(zk).client() as client:
        client.ensure_path(PREFIX)  # shared server: keep the prefix node open for other tests
    proc = start(processes, zk, election, *sh("exit 3"), opts=("--zk-auth-file", str(auth)))
    assert wait_exit(proc) == 3
    assert last_outcome(ZkStore(zk), election)[1]["status"] == 3
    with ZkStore(zk).client() as client, pytest.raises(NoAuthError):
        client.set(f"{PREFIX}/@last-run/{election}", b"forged")
    again = start(processes, zk, election, "true", opts=("--zk-auth-file", str(auth)))
    assert wait_exit(again) == 0
    assert last_outcome(ZkStore(zk), election)[1]["status"] == 0


def test_outcome_lines_fit_80_columns(capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    outcomes = [
        outcome_record(1, "i" * 300, now - 720, 2.1, 3, "exited"),
        outcome_record(2, "node-a", now - 7200, 4000.0, 137, "killed"),
        outcome_record(3, "node-a", now, 0.0, 143, "stepped-down"),
        b"\x00" * 300,
    ]
    for raw in outcomes:
        operate.print_plain(
            {
                "prefix": "/leaderrun",
                "elections": [
                    {
                        "name": "e",
                        "leader": None,
                        "step_down": None,
                        "waiting": [],
                        "last_run": None,
                        "last_outcome": operate.describe_outcome(raw),
                    }
                ],
            }
        )
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "  last run 12 min ago by " + "i" * 34 + "…: exit 3 after 2.1 s"
    assert lines[3] == (
        "  last run 2 h ago by node-a: killed by SIGKILL after 67 min, leaderrun died"
    )
    assert lines[5] == "  last run just now by node-a: killed by SIGTERM after 0 s, stepped down"
    assert lines[7].startswith("  last run: <foreign record")
    assert all(len(line) <= 80 for line in lines), lines
