"""The behaviour contract (SPEC §3-§7) of `leaderrun run`, `status` and `step-down`, proven on
every backend: each test runs once on etcd and once on ZooKeeper (the `store` fixture).

Every test runs leaderrun as a real subprocess (`python -m leaderrun`) against a real server
started by the fixtures, and waits on observable events (files the child writes, candidates
in the store, processes exiting), never on sleeps. Store-specific reads go through the
`Store` probe, so nothing here knows which backend it runs on.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from helpers import LEADERRUN_CMD, ProcessRegistry, descendants, wait_for
from runs import alive, child_pid, long_job, operator, sh, start, wait_exit
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
    argv = [*LEADERRUN_CMD, "--backend", store.backend_url, "-e", election, "--id", "node-x"]
    proc = processes.start(
        [*argv, "--", *job],
        env={**os.environ, "NOTIFY_SOCKET": "/nonexistent", "LEADERRUN_PASSWORD": "s3cret"},
    )
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
    assert "LEADERRUN_PASSWORD" not in env
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
    ready, started = tmp_path / "ready", tmp_path / "started"
    first = sh(f"touch {ready}; while :; do sleep 0.05; done")
    a = start(processes, store, election, *first, opts=("--ttl", "60s"), name="a")
    wait_for(ready.exists, 15, message="first child running")
    b = start(processes, store, election, *sh(f"touch {started}"), opts=("--ttl", "60s"))
    wait_for(lambda: store.queued(election, 2), 15)

    signalled = time.monotonic()
    a.send_signal(signal.SIGTERM if how == "TERM" else signal.SIGKILL)
    wait_for(started.exists, 15, interval=0.005, message="next child started")
    handover = time.monotonic() - signalled
    record_property(f"handover_{how}_{store.kind}", round(handover, 3))
    print(f"\nhandover after SIG{how} on {store.kind}: {handover:.3f}s")
    assert handover < HANDOVER_BOUND
    assert wait_exit(b) == 0
    wait_exit(a)


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
    job, pid_file, done = long_job(tmp_path, ignore_term=False)
    a = start(processes, store, election, *job, opts=("--id", "a"), name="a")
    pid = child_pid(pid_file)
    b = start(processes, store, election, "true", opts=("--id", "b"), name="b")
    wait_for(lambda: store.queued(election, 2), 15)

    def leader_shows_child() -> dict[str, object] | None:
        result = operator(store, "status", "--json", election)
        assert result.returncode == 0, result.stderr
        (shown,) = json.loads(result.stdout)["elections"]
        return shown if shown["leader"]["child_pid"] == pid else None

    shown = wait_for(leader_shows_child, 15, message="status showing the child's pid")
    queue = store.candidates(election)
    assert shown["name"] == election
    assert shown["leader"]["id"] == "a" and shown["leader"]["token"] == queue[0].token
    assert [w["id"] for w in shown["waiting"]] == ["b"]  # type: ignore[attr-defined]
    assert shown["waiting"][0]["token"] == queue[1].token  # type: ignore[index]
    listed = json.loads(operator(store, "status", "--json").stdout)["elections"]
    assert election in [e["name"] for e in listed]

    done.touch()
    assert wait_exit(a) == 0 and wait_exit(b) == 0
    after = operator(store, "status", "--json", election)
    assert after.returncode == 3
    assert json.loads(after.stdout)["elections"][0]["leader"] is None


def test_step_down_moves_the_job_to_the_next_candidate(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    job, pid_file, _ = long_job(tmp_path, ignore_term=False)
    ran = tmp_path / "ran"
    a = start(processes, store, election, *job, opts=("--id", "a"), name="a")
    pid = child_pid(pid_file)
    b = start(processes, store, election, "touch", str(ran), opts=("--id", "b"), name="b")
    wait_for(lambda: store.queued(election, 2), 15)

    result = operator(store, "step-down", election)
    assert result.returncode == 0, result.stderr
    assert "a" in result.stdout and "stepped down" in result.stdout
    assert wait_exit(a) == 75
    assert not alive(pid)
    assert "leadership lost" in a.read_stderr()
    assert wait_exit(b) == 0 and ran.exists()
    assert operator(store, "step-down", election).returncode == 3  # nobody left to step down


def test_once_per_skips_a_second_run_and_status_shows_the_record(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    job = sh(f"echo $LEADERRUN_ID >> {journal}")
    for ident in ("first", "second"):
        proc = start(processes, store, election, *job, opts=("--once-per", "1h", "--id", ident))
        assert wait_exit(proc) == 0
    assert journal.read_text() == "first\n"
    assert store.candidates(election) == []
    shown = json.loads(operator(store, "status", "--json", election).stdout)["elections"][0]
    assert shown["last_run"]["id"] == "first" and shown["last_run"]["foreign"] is False


def test_forever_rejoins_the_end_of_the_queue_after_step_down(
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
        lambda: [c.identity for c in store.candidates(election)] == ["b", "a"],
        15,
        message="b leading, a queued behind it",
    )
    wait_for(lambda: len(journal.read_text().splitlines()) == 2, 15, message="b's child")
    (a_token, b_token) = [int(line.split()[1]) for line in journal.read_text().splitlines()]
    assert b_token > a_token
    for proc in (a, b):
        proc.send_signal(signal.SIGTERM)
    assert wait_exit(a) == 0 and wait_exit(b) == 0
    assert store.candidates(election) == []


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
    [b"\x00\x01\x02binary", b'{"truncated": ', b'{"id": 5}', b"x" * 1_000_000],
    ids=["binary", "truncated-json", "id-not-str", "huge"],
)
def test_waits_behind_a_foreign_candidate_and_runs_after_it_goes(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path, value: bytes
) -> None:
    ran = tmp_path / "ran"
    with store.foreign_candidate(election, value):
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


@pytest.mark.parametrize(
    ("opts", "needle"),
    [
        (("--ttl", "10x"), "--ttl"),
        (("--ttl", "-1s"), "--ttl"),
        (("--ttl", "0"), "--ttl"),
        (("--ttl", "1e309"), "--ttl"),
        (("--kill-grace", "soon"), "--kill-grace"),
        (("--ttl", "3s"), "raise --ttl"),
        (("--ttl", "10s", "--renew-interval", "8s"), "--renew-interval"),
        (("--backend", "http://127.0.0.1:2379"), "no backend for scheme"),
        (("--backend", "{scheme}://127.0.0.1:99999"), "--backend"),
        (("--backend", "{scheme}://user:pw@127.0.0.1:2379"), "--password-file"),
        (("--backend", "127.0.0.1:2379"), "not a URL"),
        (("-e", "a/b"), "--election"),
        (("-e", "x" * 129), "--election"),
        (("--prefix", "leaderrun"), "--prefix"),
        (("--no-such-option",), "No such option"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    store: Store,
    election: str,
    processes: ProcessRegistry,
    opts: tuple[str, ...],
    needle: str,
) -> None:
    base = ["--backend", store.backend_url, "-e", election]
    opts = tuple(opt.format(scheme=store.kind) for opt in opts)
    proc = processes.start([*LEADERRUN_CMD, *base, *opts, "--", "echo", "never"])
    assert wait_exit(proc) == 2
    out, err = proc.output()
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err and "Traceback" not in err
    assert "pw" not in err
    assert store.candidates(election) == []


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
    url = f"{store.kind}://127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = processes.start(
        [*LEADERRUN_CMD, "--backend", url, "--connect-timeout", "1s", "-e", election, "--", "true"]
    )
    assert wait_exit(proc) == 69
    elapsed = time.monotonic() - started
    err = proc.read_stderr()
    assert f"cannot reach {store.product}" in err and len(err.strip().splitlines()) == 1
    assert elapsed >= 1.0  # it really tried for the whole connect timeout
