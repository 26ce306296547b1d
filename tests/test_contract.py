"""The behaviour contract (SPEC §3-§7) of `leaderrun run`, `status` and `step-down`, proven on
every backend: each test runs once on etcd and once on ZooKeeper (the `store` fixture). The
timing rule under server faults is proven the same way in test_faults.py; the other
backend-neutral files (test_modes.py, test_operate.py, test_chaos.py) run on both too.

Every test runs leaderrun as a real subprocess (`python -m leaderrun`) against a real server
started by the fixtures, and waits on observable events (files the child writes, candidates
in the store, processes exiting), never on sleeps. Store-specific reads go through the
`Store` probe, so nothing here knows which backend it runs on.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import LEADERRUN_CMD, ProcessRegistry, descendants, wait_for
from runs import (
    URL,
    alive,
    child_pid,
    handover,
    long_job,
    operator,
    queue_ids,
    sh,
    start,
    status,
    wait_exit,
)
from servers import free_port
from stores import Store

#: The largest time from the old leader's exit (SIGTERM) or death (SIGKILL) to the next
#: child's start that still proves a release: with a 60 s TTL, expiry cannot explain it.
HANDOVER_BOUND = 2.0


# -- election order -----------------------------------------------------------------------------


def test_one_child_at_a_time_in_arrival_order(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    release = tmp_path / "release"
    job = sh(
        f'echo "start $LEADERRUN_ID $LEADERRUN_FENCING_TOKEN" >> {journal}; '
        f"while [ ! -e {release} ]; do sleep 0.02; done; "
        f'echo "end $LEADERRUN_ID" >> {journal}'
    )
    runs = []
    for n, ident in enumerate(["a", "b", "c"], start=1):
        runs.append(start(processes, store, election, *job, opts=("--id", ident), name=ident))
        wait_for(lambda n=n: store.queued(election, n), 15, message=f"{n} candidates queued")
    assert [c.identity for c in store.candidates(election)] == ["a", "b", "c"]
    release.touch()
    assert [wait_exit(p) for p in runs] == [0, 0, 0]

    lines = journal.read_text().split("\n")[:-1]
    assert [line.split()[:2] for line in lines] == [
        ["start", "a"], ["end", "a"], ["start", "b"], ["end", "b"], ["start", "c"], ["end", "c"],
    ]  # fmt: skip
    tokens = [int(line.split()[2]) for line in lines if line.startswith("start")]
    assert tokens == sorted(tokens) and len(set(tokens)) == 3
    assert store.candidates(election) == []


def test_each_waiter_names_the_candidate_just_ahead(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """No thundering herd: the third candidate waits behind the second, not the leader."""
    release = tmp_path / "release"
    job = sh(f"while [ ! -e {release} ]; do sleep 0.02; done")
    runs = []
    for n, ident in enumerate(["a", "b", "c"], start=1):
        runs.append(start(processes, store, election, *job, opts=("--id", ident), name=ident))
        wait_for(lambda n=n: store.queued(election, n), 15, message=f"{n} candidates queued")
    wait_for(lambda: "waiting behind" in runs[2].read_stderr(), 15, message="c waiting")
    assert "waiting behind b" in runs[2].read_stderr()
    assert "waiting behind a" in runs[1].read_stderr()
    release.touch()
    assert [wait_exit(p) for p in runs] == [0, 0, 0]


def test_fencing_token_strictly_increases_across_terms(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    tokens_file = tmp_path / "tokens"
    for term in range(3):
        proc = start(
            processes, store, election, *sh(f"echo $LEADERRUN_FENCING_TOKEN >> {tokens_file}"),
            name=f"term{term}",
        )  # fmt: skip
        assert wait_exit(proc) == 0
        # Another election's write in between must not break monotonicity.
        store.write_elsewhere(f"other-{election}", str(term))
    tokens = [int(t) for t in tokens_file.read_text().split()]
    assert len(tokens) == 3
    assert tokens[0] < tokens[1] < tokens[2]


# -- the child's environment and status ---------------------------------------------------------


def test_child_env_and_token_is_the_leaders_token_in_the_store(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    env_file, go = tmp_path / "env", tmp_path / "go"
    job = sh(
        f"env > {env_file}.tmp; mv {env_file}.tmp {env_file}; "
        f"while [ ! -e {go} ]; do sleep 0.02; done"
    )
    hidden = {"NOTIFY_SOCKET": "/nonexistent", "LEADERRUN_PASSWORD": "s3cret"}
    proc = start(processes, store, election, *job, opts=("--id", "node-x"), env=hidden)
    wait_for(env_file.exists, 15, message="child environment written")
    (leader,) = store.candidates(election)
    go.touch()
    assert wait_exit(proc) == 0

    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    assert env["LEADERRUN_FENCING_TOKEN"] == str(leader.token)
    assert leader.identity == "node-x"
    assert env["LEADERRUN_ELECTION"] == election
    assert env["LEADERRUN_ID"] == "node-x"
    assert env["LEADERRUN_BACKEND"] == store.backend_url
    assert env["LEADERRUN_LEASE_TTL"] == "10"
    assert "NOTIFY_SOCKET" not in env
    assert "LEADERRUN_PASSWORD" not in env and "s3cret" not in env_file.read_text()
    assert store.candidates(election) == []


@pytest.mark.parametrize(
    ("script", "expected"),
    [("exit 0", 0), ("exit 3", 3), ("kill -USR1 $$", 128 + signal.SIGUSR1)],
    ids=["zero", "three", "signal"],
)
def test_exit_status_of_child_is_returned(
    store: Store, election: str, processes: ProcessRegistry, script: str, expected: int
) -> None:
    proc = start(processes, store, election, *sh(script))
    assert wait_exit(proc) == expected
    assert proc.read_stdout() == ""
    assert store.candidates(election) == []


def test_quiet_by_default_on_the_normal_path(
    store: Store, election: str, processes: ProcessRegistry
) -> None:
    argv = [*LEADERRUN_CMD, "--backend", store.backend_url, "-e", election, "--", "echo", "hi"]
    proc = processes.start(argv)
    assert wait_exit(proc) == 0
    assert proc.output() == ("hi\n", "")


def test_command_not_found_exits_127_without_touching_the_store(
    store: Store, election: str, processes: ProcessRegistry
) -> None:
    proc = start(processes, store, election, "/nonexistent/job.sh")
    assert wait_exit(proc) == 127
    err = proc.read_stderr()
    assert "command not found: /nonexistent/job.sh" in err and "Traceback" not in err
    assert store.candidates(election) == []


def test_command_not_executable_exits_126(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\necho never\n")
    script.chmod(0o644)
    proc = start(processes, store, election, str(script))
    assert wait_exit(proc) == 126
    assert "not executable" in proc.read_stderr()
    assert store.candidates(election) == []


def test_exec_failure_after_election_releases_at_once(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """A file that looks executable but cannot be exec'd fails only once leader: 126, and the
    next candidate is elected by release, not by lease expiry."""
    script = tmp_path / "garbage"
    script.write_bytes(b"\x7fELF-not-really\n")
    script.chmod(0o755)
    proc = start(processes, store, election, str(script), opts=("--ttl", "60s"))
    assert wait_exit(proc) == 126
    assert store.candidates(election) == []
    assert "Traceback" not in proc.read_stderr()


# -- descendants ---------------------------------------------------------------------------------


@pytest.mark.parametrize("detach", ["", "setsid"], ids=["background", "setsid"])
def test_next_leader_starts_only_after_leftover_background_process_is_gone(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path, detach: str
) -> None:
    """The first leader's child starts a background process that ignores SIGTERM and exits;
    the second leader's child checks that process is already dead when it starts."""
    leftover_pid = tmp_path / "leftover.pid"
    seen = tmp_path / "seen"
    first = sh(
        f'{detach} sh -c \'trap "" TERM; echo $$ > {leftover_pid}; '
        f"while :; do sleep 0.05; done' & "
        f"while [ ! -s {leftover_pid} ]; do sleep 0.02; done; exit 0"
    )
    second = sh(
        f'if kill -0 "$(cat {leftover_pid})" 2>/dev/null; then echo ALIVE; else echo DEAD; fi'
        f" > {seen}"
    )
    a = start(processes, store, election, *first, opts=("--kill-grace", "1s"), name="a")
    wait_for(lambda: store.queued(election, 1), 15)
    b = start(processes, store, election, *second, name="b")
    assert wait_exit(a) == 0
    assert wait_exit(b) == 0
    assert seen.read_text().strip() == "DEAD"
    pid = int(leftover_pid.read_text())
    assert not alive(pid)
    assert "child left" in a.read_stderr()  # the operator is told


# -- signals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_is_forwarded_and_leadership_released_not_expired(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path, signum: int
) -> None:
    got = tmp_path / "got"
    ready = tmp_path / "ready"
    job = sh(
        f"trap 'echo got > {got}; exit 7' TERM INT; touch {ready}; while :; do sleep 0.05; done"
    )
    a = start(processes, store, election, *job, opts=("--ttl", "60s"), name="a")
    wait_for(ready.exists, 15, message="first child running")
    handle = store.leader_handle(election)
    b = start(processes, store, election, "true", name="b")
    wait_for(lambda: store.queued(election, 2), 15)

    a.send_signal(signum)
    assert wait_exit(a) == 7
    assert got.read_text() == "got\n"
    # With a 60 s TTL the lease/session cannot have expired by itself: it was released.
    assert store.released(handle)
    assert wait_exit(b) == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_stop_signal_while_waiting_withdraws_candidacy(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path, signum: int
) -> None:
    stop = tmp_path / "stop"
    leader = start(processes, store, election, *sh(f"while [ ! -e {stop} ]; do sleep 0.05; done"))
    wait_for(lambda: store.queued(election, 1), 15)
    waiter = start(processes, store, election, "echo", "never", name="waiter")
    wait_for(lambda: store.queued(election, 2), 15)
    waiter.send_signal(signum)
    assert wait_exit(waiter) == 128 + signum
    assert len(store.candidates(election)) == 1
    assert waiter.read_stdout() == ""
    stop.touch()
    assert wait_exit(leader) == 0


def test_sigkill_of_leaderrun_kills_child_group_then_hands_over(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    job = sh(
        f"sleep 1000 & echo $! >> {pids}; setsid sleep 1000 & echo $! >> {pids}; "
        f"echo $$ >> {pids}; wait"
    )
    a = start(processes, store, election, *job, opts=("--ttl", "60s"), name="a")
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 3, 15)
    handle = store.leader_handle(election)
    b = start(processes, store, election, "true", name="b")
    wait_for(lambda: store.queued(election, 2), 15)

    a.kill()
    assert a.wait(timeout=5) == -signal.SIGKILL
    child_pids = [int(p) for p in pids.read_text().split()]
    wait_for(lambda: not any(alive(p) for p in child_pids), 5, message="child processes dead")
    assert wait_exit(b) == 0
    assert store.released(handle)


def test_worker_killed_guard_kills_child_and_releases(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """If leaderrun's worker process dies (OOM killer), its guard cleans up: exit 75."""
    pids = tmp_path / "pids"
    job = sh(f"setsid sleep 1000 & echo $! >> {pids}; echo $$ >> {pids}; wait")
    a = start(processes, store, election, *job, opts=("--ttl", "60s"), name="a")
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, 15)
    handle = store.leader_handle(election)
    child_pids = [int(p) for p in pids.read_text().split()]
    worker = [
        p
        for p in descendants(a.pid)
        if p not in child_pids and b"leaderrun" in Path(f"/proc/{p}/cmdline").read_bytes()
    ]
    assert len(worker) == 1
    os.kill(worker[0], signal.SIGKILL)
    assert wait_exit(a) == 75
    assert not any(alive(p) for p in child_pids)
    assert store.released(handle)


@pytest.mark.parametrize("how", ["TERM", "KILL"])
def test_handover_is_prompt(
    store: Store,
    election: str,
    processes: ProcessRegistry,
    tmp_path: Path,
    how: str,
    record_property: pytest.RecordProperty,
) -> None:
    """The next candidate's child starts within HANDOVER_BOUND of the leader's SIGTERM (its
    child exits at once) or SIGKILL, with a 60 s TTL: by release, not expiry."""
    signum = signal.SIGTERM if how == "TERM" else signal.SIGKILL
    took = handover(processes, store, election, tmp_path, signum)
    record_property(f"handover_{how}_{store.kind}", round(took, 3))
    print(f"\nhandover after SIG{how} on {store.kind}: {took:.3f}s")
    assert took < HANDOVER_BOUND


# -- leadership lost -------------------------------------------------------------------------------


def test_deleting_leader_key_stops_child_with_exit_75(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    job, pid_file, _ = long_job(tmp_path)
    a = start(processes, store, election, *job, opts=("--kill-grace", "1s"))
    pid = child_pid(pid_file)
    store.delete_candidates(election)
    assert wait_exit(a) == 75
    assert not alive(pid)
    err = a.read_stderr()
    assert "leadership lost" in err and "was deleted" in err


# -- status, step-down, --once-per, --forever ------------------------------------------------------


def test_status_shows_leader_then_waiters_in_queue_order(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """JSON and plain text, one election and all of them; exit 3 (no leader) before anyone
    campaigned and again once everyone is done."""
    code, document = status(store, election)
    assert code == 3 and document["elections"][0]["leader"] is None

    job, pid_file, done = long_job(tmp_path, ignore_term=False)
    procs = []
    for n, ident in enumerate(["node-a", "node-b", "node-c"], start=1):
        procs.append(start(processes, store, election, *job, opts=("--id", ident), name=ident))
        wait_for(lambda n=n: store.queued(election, n), 15, message=f"{n} candidates queued")
    pid = child_pid(pid_file)

    def leader_shows_child() -> dict[str, Any] | None:
        code, document = status(store, election)
        assert code == 0, document
        return document if document["elections"][0]["leader"]["child_pid"] else None

    document = wait_for(leader_shows_child, 15, message="status showing the child's pid")
    queue = store.candidates(election)
    assert document["schema"] == 1
    (view,) = document["elections"]
    leader, waiting = view["leader"], view["waiting"]
    assert view["name"] == election
    assert leader["id"] == "node-a" and leader["pid"] == procs[0].pid
    assert leader["child_pid"] == pid
    assert leader["leader_since"] is not None and leader["foreign"] is False
    assert [w["id"] for w in waiting] == ["node-b", "node-c"]
    assert [w["pid"] for w in waiting] == [procs[1].pid, procs[2].pid]
    assert [leader["token"], *(w["token"] for w in waiting)] == [c.token for c in queue]
    assert leader["token"] < waiting[0]["token"] < waiting[1]["token"]

    plain = operator(store, "status", election)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.startswith(f"{election}: node-a (host ")
    assert "waiting 1: node-b" in plain.stdout and "waiting 2: node-c" in plain.stdout

    code, everything = status(store)
    assert election in [e["name"] for e in everything["elections"]]

    done.touch()
    assert [wait_exit(p) for p in procs] == [0, 0, 0]
    code, document = status(store, election)
    assert code == 3 and document["elections"][0]["leader"] is None


def test_step_down_moves_the_job_to_the_next_candidate(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """`step-down --wait` names the old and the new leader; the old child is stopped (75);
    with nobody left, step-down exits 3."""
    job_a, pid_a, _ = long_job(tmp_path, ignore_term=False, name="a")
    job_b, pid_b, done_b = long_job(tmp_path, ignore_term=False, name="b")
    a = start(processes, store, election, *job_a, opts=("--id", "node-a"), name="a")
    first_child = child_pid(pid_a)
    b = start(processes, store, election, *job_b, opts=("--id", "node-b"), name="b")
    wait_for(lambda: store.queued(election, 2), 15)

    done = operator(store, "step-down", "--wait", election)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "node-a" in lines[0] and "asked" in lines[0]
    assert "handed over" in done.stdout
    assert "node-b" in lines[-1] and "now leads" in lines[-1]
    assert wait_exit(a) == 75
    assert not alive(first_child)
    assert "stepping down as asked by" in a.read_stderr()
    child_pid(pid_b)
    assert queue_ids(store, election) == ["node-b"]
    done_b.touch()
    assert wait_exit(b) == 0

    nobody = operator(store, "step-down", election)
    assert nobody.returncode == 3
    assert "no leader" in nobody.stderr


def test_step_down_under_forever_rejoins_the_back_of_the_queue(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    job = sh(f'echo "$LEADERRUN_ID $LEADERRUN_FENCING_TOKEN" >> {journal}; exec sleep 1000')
    opts = ("--forever", "--restart-delay", "0.2s", "--kill-grace", "1s")
    a = start(processes, store, election, *job, opts=(*opts, "--id", "a"), name="a")
    wait_for(lambda: journal.exists() and journal.read_text().startswith("a "), 15)
    b = start(processes, store, election, *job, opts=(*opts, "--id", "b"), name="b")
    wait_for(lambda: store.queued(election, 2), 15)

    assert operator(store, "step-down", election).returncode == 0
    wait_for(
        lambda: queue_ids(store, election) == ["b", "a"],
        15,
        message="b leading, a queued behind it",
    )
    wait_for(lambda: len(journal.read_text().splitlines()) == 2, 15, message="b's child")
    (a_token, b_token) = [int(line.split()[1]) for line in journal.read_text().splitlines()]
    assert b_token > a_token
    assert a.poll() is None  # still campaigning
    for proc in (a, b):
        proc.send_signal(signal.SIGTERM)
    assert wait_exit(a) == 0 and wait_exit(b) == 0
    assert store.candidates(election) == []


def test_once_per_two_cron_waves_run_the_job_once_and_status_shows_the_record(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """Three hosts' crons fire together, then again a little later (clock skew): one run.
    The second wave's leader is skipped by the record, which `status` shows as ours."""
    journal = tmp_path / "journal"
    job = sh(f"echo $LEADERRUN_ID >> {journal}")
    opts = ("--no-wait", "--once-per", "30s")
    for wave in range(2):
        procs = [
            start(processes, store, election, *job, opts=(*opts, "--id", f"h{n}"),
                  name=f"w{wave}h{n}", verbose=0)
            for n in range(3)
        ]  # fmt: skip
        assert [wait_exit(p) for p in procs] == [0, 0, 0]
        assert all(p.output() == ("", "") for p in procs), "cron must stay silent"
    assert len(journal.read_text().split()) == 1
    assert store.candidates(election) == []
    last_run = status(store, election)[1]["elections"][0]["last_run"]
    assert last_run["id"] == journal.read_text().strip() and last_run["foreign"] is False


# -- values leaderrun did not write ----------------------------------------------------------------


def test_status_shows_foreign_values_and_still_counts_a_leader(store: Store, election: str) -> None:
    with store.foreign_candidate(election, b"\x01\x02 not json {"):
        store.put_record(election, b'{"truncated": ')
        result = operator(store, "status", "--json", election)
        assert result.returncode == 0, result.stderr
        shown = json.loads(result.stdout)["elections"][0]
        assert shown["leader"]["foreign"] is True and shown["leader"]["id"] is None
        assert "not json" in shown["leader"]["raw"]
        assert shown["last_run"]["foreign"] is True
        plain = operator(store, "status", election)
        assert plain.returncode == 0 and "<foreign value" in plain.stdout


@pytest.mark.parametrize(
    "value",
    [b"\x00\x01\x02binary", b'{"truncated": ', b"[1, 2, 3]", b'{"id": 5}', b"x" * 1_000_000],
    ids=["binary", "truncated-json", "json-list", "id-not-str", "huge"],
)
def test_waits_behind_a_foreign_candidate_and_runs_after_it_goes(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path, value: bytes
) -> None:
    """`status` counts the foreign candidate as the leader; `run` queues behind it and runs
    only once it is gone."""
    ran = tmp_path / "ran"
    with store.foreign_candidate(election, value):
        code, document = status(store, election)
        assert code == 0 and document["elections"][0]["leader"]["foreign"] is True
        proc = start(processes, store, election, "touch", str(ran))
        wait_for(lambda: "waiting behind <foreign value" in proc.read_stderr(), 15)
        assert not ran.exists()
    assert wait_exit(proc) == 0
    assert ran.exists()


def test_foreign_last_run_record_is_ignored_with_a_warning(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    store.put_record(election, json.dumps(["not", "ours"]).encode())
    ran = tmp_path / "ran"
    proc = start(processes, store, election, "touch", str(ran), opts=("--once-per", "1h"))
    assert wait_exit(proc) == 0
    assert ran.exists()
    assert "did not write" in proc.read_stderr()


# -- bad input -------------------------------------------------------------------------------------

BAD_INPUT: list[tuple[tuple[bytes, ...], str]] = [
    ((b"--ttl", b"10x"), "--ttl"),
    ((b"--ttl", b"-1s"), "--ttl"),
    ((b"--ttl", b"0"), "--ttl"),
    ((b"--ttl", b"1e309"), "--ttl"),
    ((b"--kill-grace", b"soon"), "--kill-grace"),
    ((b"--ttl", b"3s"), "raise --ttl"),
    ((b"--ttl", b"10s", b"--renew-interval", b"8s"), "--renew-interval"),
    ((b"--backend", b"http://127.0.0.1:2379"), "no backend for scheme"),
    ((b"--backend", b"{scheme}://127.0.0.1:65536"), "--backend"),
    ((b"--backend", b"{scheme}://user:pw@127.0.0.1:2379"), "--password-file"),
    ((b"--backend", b"127.0.0.1:2379"), "not a URL"),
    ((b"-e", b"a/b"), "--election"),
    ((b"-e", b"x" * 129), "--election"),
    ((b"-e", b"bad\xffname"), "--election"),
    ((b"--id", b"two\nlines"), "--id"),
    ((b"--id", b"x" * 300), "--id"),
    ((b"--id", b"\xff\xfe"), "--id"),
    ((b"--prefix", b"leaderrun"), "--prefix"),
    ((b"--no-such-option",), "No such option"),
]


def _case_id(args: tuple[bytes, ...]) -> str:
    text = b" ".join(args).replace(b"{scheme}", b"S").decode("latin-1")
    return text[:24].encode("unicode_escape").decode()


@pytest.mark.parametrize(
    ("args", "needle"), BAD_INPUT, ids=[_case_id(args) for args, _ in BAD_INPUT]
)
def test_bad_input_is_one_line_and_exit_2_and_leaves_nothing(
    store: Store,
    election: str,
    processes: ProcessRegistry,
    args: tuple[bytes, ...],
    needle: str,
) -> None:
    prefix = f"/hostile-{secrets.token_hex(3)}"
    args = tuple(a.replace(b"{scheme}", store.kind.encode()) for a in args)
    argv = [os.fsencode(a) for a in LEADERRUN_CMD]
    argv += [b"--backend", store.backend_url.encode(), b"--prefix", prefix.encode()]
    argv += [b"-e", election.encode(), *args, b"--", b"echo", b"never"]
    proc = processes.start(argv, name="hostile")  # type: ignore[arg-type]
    assert wait_exit(proc) == 2
    out, err = proc.output()
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err and "Traceback" not in err
    assert "pw" not in err
    assert store.keys_under(prefix) == []


def test_command_name_that_is_not_an_election_name_asks_for_election(
    store: Store, processes: ProcessRegistry, tmp_path: Path
) -> None:
    script = tmp_path / "my job"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    proc = processes.start([*LEADERRUN_CMD, "--backend", store.backend_url, "--", str(script)])
    assert wait_exit(proc) == 2
    err = proc.read_stderr()
    assert "--election" in err and len(err.strip().splitlines()) == 1


def test_unreachable_backend_exits_69_after_connect_timeout(
    store: Store, processes: ProcessRegistry, election: str
) -> None:
    nowhere = URL(f"{store.kind}://127.0.0.1:{free_port()}")
    started = time.monotonic()
    proc = start(processes, nowhere, election, "true", opts=("--connect-timeout", "1s"), verbose=0)
    assert wait_exit(proc) == 69
    elapsed = time.monotonic() - started
    err = proc.read_stderr()
    assert f"cannot reach {store.product}" in err and len(err.strip().splitlines()) == 1
    assert elapsed >= 1.0  # it really tried for the whole connect timeout


def test_a_member_that_accepts_but_never_answers_exits_69_after_connect_timeout(
    store: Store, processes: ProcessRegistry, election: str
) -> None:
    """A silent member (TCP accepted, nothing answered) must not stretch --connect-timeout:
    the first wave's ZooKeeper client took 10.6 s for `--connect-timeout 2s`."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = URL(f"{store.kind}://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        proc = start(processes, url, election, "true", opts=("--connect-timeout", "2s"), verbose=0)
        assert wait_exit(proc) == 69
        elapsed = time.monotonic() - started
    assert f"cannot reach {store.product}" in proc.read_stderr()
    assert 2.0 <= elapsed < 5.0, f"exit 69 took {elapsed:.1f}s for --connect-timeout 2s"


def test_status_unreachable_exits_69(store: Store) -> None:
    nowhere = URL(f"{store.kind}://127.0.0.1:{free_port()}")
    done = operator(nowhere, "status", "--connect-timeout", "1s")
    assert done.returncode == 69
    err = done.stderr
    assert len(err.strip().splitlines()) == 1 and f"cannot reach {store.product}" in err
