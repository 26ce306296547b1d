"""`leaderrun run` on a real etcd: election order, child supervision, exit codes, handover.

Every test runs leaderrun as a real subprocess (`python -m leaderrun`) against a real etcd
started by the fixtures, and waits on observable events (files the child writes, keys in etcd,
processes exiting), never on sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import LEADERRUN_CMD, ProcessRegistry, TrackedPopen, descendants, wait_for
from servers import EtcdCluster

PREFIX = "/leaderrun"


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def start(
    processes: ProcessRegistry,
    store: EtcdCluster,
    election: str,
    *command: str,
    opts: tuple[str, ...] = (),
    name: str | None = None,
) -> TrackedPopen:
    argv = [*LEADERRUN_CMD, "--backend", store.backend_url, "-e", election, "-v", *opts]
    return processes.start([*argv, "--", *command], name=name)


def keys(store: EtcdCluster, election: str) -> list[dict[str, object]]:
    """The election's queue as etcd holds it, in create-revision order."""
    out = store.etcdctl("get", "--prefix", f"{PREFIX}/{election}/", "-w", "json").stdout
    kvs = json.loads(out).get("kvs", [])
    return sorted(kvs, key=lambda kv: int(kv["create_revision"]))


def queued(store: EtcdCluster, election: str, count: int) -> bool:
    return len(keys(store, election)) >= count


def lease_of(kv: dict[str, object]) -> str:
    return f"{int(kv['lease']):x}"  # type: ignore[call-overload]


def lease_revoked(store: EtcdCluster, lease_hex: str) -> bool:
    out = store.etcdctl("lease", "timetolive", lease_hex).stdout
    return "already expired" in out


def wait_exit(proc: TrackedPopen, timeout: float = 30) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"leaderrun did not exit; stderr:\n{proc.read_stderr()}") from None


def sh(script: str) -> tuple[str, ...]:
    return ("sh", "-c", script)


# -- election order ---------------------------------------------------------------------------


def test_one_child_at_a_time_in_arrival_order(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry, tmp_path: Path
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
        runs.append(start(processes, etcd, election, *job, opts=("--id", ident), name=ident))
        wait_for(lambda n=n: queued(etcd, election, n), 15, message=f"{n} candidates queued")
    release.touch()
    assert [wait_exit(p) for p in runs] == [0, 0, 0]

    lines = journal.read_text().split("\n")[:-1]
    assert [line.split()[:2] for line in lines] == [
        ["start", "a"], ["end", "a"], ["start", "b"], ["end", "b"], ["start", "c"], ["end", "c"],
    ]  # fmt: skip
    tokens = [int(line.split()[2]) for line in lines if line.startswith("start")]
    assert tokens == sorted(tokens) and len(set(tokens)) == 3
    assert keys(etcd, election) == []


def test_fencing_token_strictly_increases_across_terms(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    tokens_file = tmp_path / "tokens"
    for term in range(3):
        proc = start(
            processes, etcd, election, *sh(f"echo $LEADERRUN_FENCING_TOKEN >> {tokens_file}"),
            name=f"term{term}",
        )  # fmt: skip
        assert wait_exit(proc) == 0
        # Another election's write in between must not break monotonicity.
        etcd.etcdctl("put", f"{PREFIX}/other-{election}", str(term))
    tokens = [int(t) for t in tokens_file.read_text().split()]
    assert len(tokens) == 3
    assert tokens[0] < tokens[1] < tokens[2]


# -- the child's environment and status ---------------------------------------------------------


def test_child_env_and_token_is_create_revision_of_leader_key(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    env_file, kv_file = tmp_path / "env", tmp_path / "kv.json"
    job = sh(
        f"env > {env_file}; "
        f"ETCDCTL_API=3 etcdctl --endpoints {etcd.endpoints} get --prefix "
        f"{PREFIX}/{election}/ -w json > {kv_file}"
    )
    argv = [*LEADERRUN_CMD, "--backend", etcd.backend_url, "-e", election, "--id", "node-x"]
    proc = processes.start(
        [*argv, "--", *job],
        env={**os.environ, "NOTIFY_SOCKET": "/nonexistent", "LEADERRUN_PASSWORD": "s3cret"},
    )
    assert wait_exit(proc) == 0

    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    (kv,) = json.loads(kv_file.read_text())["kvs"]
    assert env["LEADERRUN_FENCING_TOKEN"] == str(kv["create_revision"])
    assert env["LEADERRUN_ELECTION"] == election
    assert env["LEADERRUN_ID"] == "node-x"
    assert env["LEADERRUN_BACKEND"] == etcd.backend_url
    assert env["LEADERRUN_LEASE_TTL"] == "10"
    assert "NOTIFY_SOCKET" not in env
    assert "LEADERRUN_PASSWORD" not in env
    import base64

    assert base64.b64decode(kv["key"]).decode() == f"{PREFIX}/{election}/{lease_of(kv)}"


@pytest.mark.parametrize(
    ("script", "expected"),
    [("exit 0", 0), ("exit 3", 3), ("kill -USR1 $$", 128 + signal.SIGUSR1)],
    ids=["zero", "three", "signal"],
)
def test_exit_status_of_child_is_returned(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry, script: str, expected: int
) -> None:
    proc = start(processes, etcd, election, *sh(script))
    assert wait_exit(proc) == expected
    assert proc.read_stdout() == ""
    assert keys(etcd, election) == []


def test_quiet_by_default_on_the_normal_path(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry
) -> None:
    argv = [*LEADERRUN_CMD, "--backend", etcd.backend_url, "-e", election, "--", "echo", "hi"]
    proc = processes.start(argv)
    assert wait_exit(proc) == 0
    assert proc.output() == ("hi\n", "")


def test_command_not_found_exits_127_without_touching_the_store(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry
) -> None:
    proc = start(processes, etcd, election, "/nonexistent/job.sh")
    assert wait_exit(proc) == 127
    err = proc.read_stderr()
    assert "command not found: /nonexistent/job.sh" in err and "Traceback" not in err
    assert keys(etcd, election) == []


def test_command_not_executable_exits_126(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\necho never\n")
    script.chmod(0o644)
    proc = start(processes, etcd, election, str(script))
    assert wait_exit(proc) == 126
    assert "not executable" in proc.read_stderr()
    assert keys(etcd, election) == []


def test_exec_failure_after_election_releases_at_once(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """A file that looks executable but cannot be exec'd fails only once leader: 126, and the
    next candidate is elected by release, not by lease expiry."""
    script = tmp_path / "garbage"
    script.write_bytes(b"\x7fELF-not-really\n")
    script.chmod(0o755)
    proc = start(processes, etcd, election, str(script), opts=("--ttl", "60s"))
    assert wait_exit(proc) == 126
    assert keys(etcd, election) == []
    assert "Traceback" not in proc.read_stderr()


# -- descendants ---------------------------------------------------------------------------------


@pytest.mark.parametrize("detach", ["", "setsid"], ids=["background", "setsid"])
def test_next_leader_starts_only_after_leftover_background_process_is_gone(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry, tmp_path: Path, detach: str
) -> None:
    """The first leader's child starts a background process that ignores SIGTERM and exits;
    the second leader's child checks that process is already dead when it starts."""
    leftover_pid = tmp_path / "leftover.pid"
    seen = tmp_path / "seen"
    first = sh(
        f"{detach} sh -c 'trap \"\" TERM; echo $$ > {leftover_pid}; "
        f"while :; do sleep 0.05; done' & "
        f"while [ ! -s {leftover_pid} ]; do sleep 0.02; done; exit 0"
    )
    second = sh(f'if kill -0 "$(cat {leftover_pid})" 2>/dev/null; then echo ALIVE; else echo DEAD; fi > {seen}')
    a = start(processes, etcd, election, *first, opts=("--kill-grace", "1s"), name="a")
    wait_for(lambda: queued(etcd, election, 1), 15)
    b = start(processes, etcd, election, *second, name="b")
    assert wait_exit(a) == 0
    assert wait_exit(b) == 0
    assert seen.read_text().strip() == "DEAD"
    pid = int(leftover_pid.read_text())
    assert not alive(pid)
    assert "child left" in a.read_stderr()  # the operator is told


# -- signals ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_is_forwarded_and_leadership_released_not_expired(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry, tmp_path: Path, signum: int
) -> None:
    got = tmp_path / "got"
    ready = tmp_path / "ready"
    job = sh(f"trap 'echo got > {got}; exit 7' TERM INT; touch {ready}; while :; do sleep 0.05; done")
    a = start(processes, etcd, election, *job, opts=("--ttl", "60s"), name="a")
    wait_for(ready.exists, 15, message="first child running")
    lease = lease_of(keys(etcd, election)[0])
    b = start(processes, etcd, election, "true", name="b")
    wait_for(lambda: queued(etcd, election, 2), 15)

    a.send_signal(signum)
    assert wait_exit(a) == 7
    assert got.read_text() == "got\n"
    # With a 60 s TTL the lease cannot have expired by itself: it was revoked.
    assert lease_revoked(etcd, lease)
    assert wait_exit(b) == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_stop_signal_while_waiting_withdraws_candidacy(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry, tmp_path: Path, signum: int
) -> None:
    stop = tmp_path / "stop"
    leader = start(processes, etcd, election, *sh(f"while [ ! -e {stop} ]; do sleep 0.05; done"))
    wait_for(lambda: queued(etcd, election, 1), 15)
    waiter = start(processes, etcd, election, "echo", "never", name="waiter")
    wait_for(lambda: queued(etcd, election, 2), 15)
    waiter.send_signal(signum)
    assert wait_exit(waiter) == 128 + signum
    assert len(keys(etcd, election)) == 1
    assert waiter.read_stdout() == ""
    stop.touch()
    assert wait_exit(leader) == 0


def test_sigkill_of_leaderrun_kills_child_group_then_hands_over(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    job = sh(f"sleep 1000 & echo $! >> {pids}; setsid sleep 1000 & echo $! >> {pids}; echo $$ >> {pids}; wait")
    a = start(processes, etcd, election, *job, opts=("--ttl", "60s"), name="a")
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 3, 15)
    lease = lease_of(keys(etcd, election)[0])
    b = start(processes, etcd, election, "true", name="b")
    wait_for(lambda: queued(etcd, election, 2), 15)

    a.kill()
    assert a.wait(timeout=5) == -signal.SIGKILL
    child_pids = [int(p) for p in pids.read_text().split()]
    wait_for(lambda: not any(alive(p) for p in child_pids), 5, message="child processes dead")
    assert wait_exit(b) == 0
    assert lease_revoked(etcd, lease)


def test_worker_killed_guard_kills_child_and_releases(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """If leaderrun's worker process dies (OOM killer), its guard cleans up: exit 75."""
    pids = tmp_path / "pids"
    job = sh(f"setsid sleep 1000 & echo $! >> {pids}; echo $$ >> {pids}; wait")
    a = start(processes, etcd, election, *job, opts=("--ttl", "60s"), name="a")
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, 15)
    lease = lease_of(keys(etcd, election)[0])
    child_pids = [int(p) for p in pids.read_text().split()]
    worker = [p for p in descendants(a.pid) if p not in child_pids and Path(f"/proc/{p}/cmdline").read_bytes().find(b"leaderrun") >= 0]
    assert len(worker) == 1
    os.kill(worker[0], signal.SIGKILL)
    assert wait_exit(a) == 75
    assert not any(alive(p) for p in child_pids)
    assert lease_revoked(etcd, lease)


# -- leadership lost --------------------------------------------------------------------------------


def test_deleting_leader_key_stops_child_with_exit_75(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    job = sh(f"trap '' TERM; echo $$ > {pid_file}; while :; do sleep 0.05; done")
    a = start(processes, etcd, election, *job, opts=("--kill-grace", "1s"))
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 15)
    etcd.etcdctl("del", "--prefix", f"{PREFIX}/{election}/")
    assert wait_exit(a) == 75
    assert not alive(int(pid_file.read_text()))
    err = a.read_stderr()
    assert "leadership lost" in err and "was deleted" in err


# -- bad input ----------------------------------------------------------------------------------------


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
        (("--backend", "etcd://127.0.0.1:99999"), "--backend"),
        (("--backend", "etcd://user:pw@127.0.0.1:2379"), "--password-file"),
        (("--backend", "127.0.0.1:2379"), "not a URL"),
        (("-e", "a/b"), "--election"),
        (("-e", "x" * 129), "--election"),
        (("--prefix", "leaderrun"), "--prefix"),
        (("--no-such-option",), "No such option"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry, opts: tuple[str, ...], needle: str
) -> None:
    base = ["--backend", etcd.backend_url, "-e", election]
    proc = processes.start([*LEADERRUN_CMD, *base, *opts, "--", "echo", "never"])
    assert wait_exit(proc) == 2
    out, err = proc.output()
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err and "Traceback" not in err
    assert "pw" not in err
    assert keys(etcd, election) == []


def test_command_name_that_is_not_an_election_name_asks_for_election(
    etcd: EtcdCluster, processes: ProcessRegistry, tmp_path: Path
) -> None:
    script = tmp_path / "my job"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    proc = processes.start([*LEADERRUN_CMD, "--backend", etcd.backend_url, "--", str(script)])
    assert wait_exit(proc) == 2
    err = proc.read_stderr()
    assert "--election" in err and len(err.strip().splitlines()) == 1


def test_unreachable_backend_exits_69_after_connect_timeout(
    processes: ProcessRegistry, election: str
) -> None:
    from servers import free_port

    url = f"etcd://127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = processes.start(
        [*LEADERRUN_CMD, "--backend", url, "--connect-timeout", "1s", "-e", election, "--", "true"]
    )
    assert wait_exit(proc) == 69
    elapsed = time.monotonic() - started
    err = proc.read_stderr()
    assert "cannot reach etcd" in err and len(err.strip().splitlines()) == 1
    assert elapsed >= 1.0  # it really tried for the whole connect timeout


# -- interoperability with etcd's own election tools ------------------------------------------------


def test_etcdctl_elect_listen_reports_our_leader(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    listen_out = tmp_path / "listen.out"
    env = {**os.environ, "ETCDCTL_API": "3"}
    processes.start(
        ["etcdctl", "--endpoints", etcd.endpoints, "elect", "--listen", f"{PREFIX}/{election}"],
        stdout=listen_out.open("wb"),
        env=env,
    )
    # The child finishes only once etcdctl has printed our identity as the leader.
    job = sh(f'while ! grep -q "\\"id\\":\\"$LEADERRUN_ID\\"" {listen_out}; do sleep 0.05; done')
    proc = start(processes, etcd, election, *job, opts=("--id", "interop-node"))
    assert wait_exit(proc) == 0
    assert f"{PREFIX}/{election}/" in listen_out.read_text()


def test_waits_behind_an_etcdctl_elect_leader(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    env = {**os.environ, "ETCDCTL_API": "3"}
    holder = processes.start(
        ["etcdctl", "--endpoints", etcd.endpoints, "elect", f"{PREFIX}/{election}", "someone"],
        env=env,
        name="etcdctl-elect",
    )
    wait_for(lambda: queued(etcd, election, 1), 15)
    ran = tmp_path / "ran"
    proc = start(processes, etcd, election, "touch", str(ran))
    wait_for(lambda: "waiting behind <foreign value 'someone'>" in proc.read_stderr(), 15)
    assert not ran.exists()
    holder.send_signal(signal.SIGINT)  # etcdctl resigns on interrupt
    assert wait_exit(proc) == 0
    assert ran.exists()
