"""Cron and systemd deployments: --no-wait, --wait-timeout, --once-per, --forever, sd_notify,
configuration precedence and log formats (SPEC §3 Modes, §5)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import LEADERRUN_CMD, ProcessRegistry, clean_env, descendants, wait_for
from runs import alive, child_pid, long_job, queue_ids, sh, start, status, wait_exit
from stores import Store

# -- cron -----------------------------------------------------------------------------------------


def test_once_per_does_not_record_a_failed_run(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    opts = ("--once-per", "1h")
    failing = start(processes, store, election, *sh(f"echo x >> {journal}; exit 1"), opts=opts)
    assert wait_exit(failing) == 1
    again = start(processes, store, election, *sh(f"echo x >> {journal}"), opts=opts)
    assert wait_exit(again) == 0
    third = start(processes, store, election, *sh(f"echo x >> {journal}"), opts=opts)
    assert wait_exit(third) == 0
    assert journal.read_text().split() == ["x", "x"]


@pytest.mark.parametrize(
    ("give_up", "waited"),
    [(("--no-wait",), 0.0), (("--wait-timeout", "1s"), 1.0)],
    ids=["no-wait", "wait-timeout"],
)
def test_not_elected_exits_with_skip_code_silently_and_withdraws(
    store: Store,
    election: str,
    processes: ProcessRegistry,
    tmp_path: Path,
    give_up: tuple[str, ...],
    waited: float,
) -> None:
    """Behind a leader, `--no-wait` gives up at once and `--wait-timeout` after waiting that
    long: exit with --skip-exit-code, print nothing, leave only the leader in the queue."""
    job, _, release = long_job(tmp_path, ignore_term=False)
    leader = start(processes, store, election, *job, opts=("--id", "leader"))
    wait_for(lambda: store.queued(election, 1), 15)
    started = time.monotonic()
    loser = start(
        processes, store, election, "touch", str(tmp_path / "ran"),
        opts=(*give_up, "--skip-exit-code", "9"), verbose=0,
    )  # fmt: skip
    assert wait_exit(loser) == 9
    assert time.monotonic() - started >= waited
    assert loser.output() == ("", "")
    assert not (tmp_path / "ran").exists()
    assert queue_ids(store, election) == ["leader"]
    release.touch()
    assert wait_exit(leader) == 0


def test_wait_timeout_runs_when_elected_in_time(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    proc = start(processes, store, election, "true", opts=("--wait-timeout", "30s"))
    assert wait_exit(proc) == 0


# -- systemd --------------------------------------------------------------------------------------


def test_forever_reruns_the_child_and_exits_0_on_sigterm(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    pids = tmp_path / "pids"
    job = sh(f"echo $$ >> {pids}; echo run >> {journal}; "
             f'if [ "$(wc -l < {journal})" -ge 2 ]; then exec sleep 1000; fi')  # fmt: skip
    proc = start(processes, store, election, *job, opts=("--forever", "--restart-delay", "100ms"))
    wait_for(lambda: journal.exists() and len(journal.read_text().split()) >= 2, 20)
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc) == 0
    assert not any(alive(int(p)) for p in pids.read_text().split())
    assert queue_ids(store, election) == []


def test_forever_sigterm_while_waiting_exits_0(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    job, _, release = long_job(tmp_path, ignore_term=False)
    leader = start(processes, store, election, *job, opts=("--id", "leader"))
    wait_for(lambda: store.queued(election, 1), 15)
    waiter = start(processes, store, election, "true", opts=("--forever", "--id", "w"))
    wait_for(lambda: store.queued(election, 2), 15)
    waiter.send_signal(signal.SIGTERM)
    assert wait_exit(waiter) == 0
    assert queue_ids(store, election) == ["leader"]
    release.touch()
    assert wait_exit(leader) == 0


def test_forever_survives_a_backend_outage(
    store_private: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """The server down for 5 s: the child is stopped per the timing rule, leaderrun stays
    up, and leads again (with a new child) once the server is back."""
    pids = tmp_path / "pids"
    job = sh(f"echo $$ >> {pids}; exec sleep 1000")
    opts = ("--forever", "--ttl", "4s", "--kill-grace", "1s", "--connect-timeout", "2s")
    proc = start(processes, store_private, election, *job, opts=opts)
    wait_for(lambda: pids.exists() and pids.read_text().split(), 15)
    first = int(pids.read_text().split()[0])
    member = store_private.members[0]
    stopped_at = time.monotonic()
    member.stop()
    wait_for(lambda: not alive(first), 10, message="child stopped while the server is down")
    assert proc.poll() is None
    wait_for(lambda: time.monotonic() >= stopped_at + 5, 10)
    member.start()
    wait_for(lambda: len(pids.read_text().split()) >= 2, 30, message="a new term after the outage")
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc) == 0
    assert not any(alive(int(p)) for p in pids.read_text().split())
    err = proc.read_stderr()
    assert "stopping child" in err


# -- sd_notify -------------------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(15)
    yield sock
    sock.close()


def receive_until(sock: socket.socket, needle: str) -> list[str]:
    messages: list[str] = []
    while not any(needle in m for m in messages):
        messages.append(sock.recv(4096).decode())
    return messages


def test_sd_notify_ready_and_status_on_a_real_socket(
    store: Store,
    election: str,
    processes: ProcessRegistry,
    tmp_path: Path,
    notify_socket: socket.socket,
) -> None:
    env_file = tmp_path / "env"
    job, _, release = long_job(tmp_path, ignore_term=False)
    job = sh(f"env > {env_file}; " + job[2])
    env = {"NOTIFY_SOCKET": notify_socket.getsockname()}
    leader = start(processes, store, election, *job, opts=("--id", "lead"), env=env)
    messages = receive_until(notify_socket, "leader, child pid")
    assert messages[0].split("\n") == ["READY=1", "STATUS=campaigning"]
    token = status(store, election)[1]["elections"][0]["leader"]["token"]
    assert messages[-1].startswith("STATUS=leader, child pid ")
    assert messages[-1].endswith(f", token {token}")
    wait_for(env_file.exists, 10)
    assert "NOTIFY_SOCKET" not in env_file.read_text()

    waiter = start(processes, store, election, "true", opts=("--id", "second"), env=env)
    assert "STATUS=waiting behind lead" in receive_until(notify_socket, "waiting behind")
    release.touch()
    assert wait_exit(leader) == 0 and wait_exit(waiter) == 0


def test_watchdog_pings_only_while_the_supervision_loop_answers(
    store: Store,
    election: str,
    processes: ProcessRegistry,
    tmp_path: Path,
    notify_socket: socket.socket,
) -> None:
    """`WatchdogSec=`: WATCHDOG=1 goes out while leaderrun's loop answers the guard's pings;
    a stopped worker gets no ping through, so systemd would restart the unit."""
    job, pid_file, release = long_job(tmp_path, ignore_term=False)
    env = {"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "400000"}
    leader = start(processes, store, election, *job, env=env)
    child = child_pid(pid_file)
    receive_until(notify_socket, "leader, child pid")
    receive_until(notify_socket, "WATCHDOG=1")
    worker = next(
        p for p in descendants(leader.pid) if p != child and p not in descendants(child)
    )
    os.kill(worker, signal.SIGSTOP)
    try:
        notify_socket.settimeout(0.2)
        with contextlib.suppress(TimeoutError):  # what was already on its way
            while True:
                notify_socket.recv(4096)
        notify_socket.settimeout(1.5)  # more than three ping periods
        with pytest.raises(TimeoutError):
            notify_socket.recv(4096)
    finally:
        os.kill(worker, signal.SIGCONT)
    notify_socket.settimeout(15)
    receive_until(notify_socket, "WATCHDOG=1")
    release.touch()
    assert wait_exit(leader) == 0


# -- configuration ---------------------------------------------------------------------------------


def _effective(
    processes: ProcessRegistry, tmp_path: Path, store: Store, args: list[str],
    env: dict[str, str],
) -> str:  # fmt: skip
    out = tmp_path / "seen"
    argv = [*LEADERRUN_CMD, *args, "--", "sh", "-c",
            f'echo "$LEADERRUN_ELECTION $LEADERRUN_LEASE_TTL $LEADERRUN_ID" > {out}']  # fmt: skip
    proc = processes.start(argv, env=clean_env({"LEADERRUN_BACKEND": store.backend_url, **env}))
    assert wait_exit(proc) == 0, proc.read_stderr()
    return out.read_text().strip()


def test_config_precedence_flags_then_env_then_file(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    config = tmp_path / "leaderrun.toml"
    config.write_text(
        f'election = "{election}-file"\nttl = "12s"\nid = "from-file"\nkill_grace = "2s"\n'
    )
    env = {"LEADERRUN_CONFIG": str(config)}
    assert _effective(processes, tmp_path, store, [], env) == f"{election}-file 12 from-file"
    env |= {"LEADERRUN_ELECTION": f"{election}-env", "LEADERRUN_TTL": "11s"}
    assert _effective(processes, tmp_path, store, [], env) == f"{election}-env 11 from-file"
    flags = ["-e", f"{election}-flag", "--ttl", "13s", "--id", "from-flag"]
    assert _effective(processes, tmp_path, store, flags, env) == f"{election}-flag 13 from-flag"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('ttl = "10s"\nbogus-key = 1\n', "unknown key 'bogus-key'"),
        ("ttl = ", "not valid TOML"),
        ('ttl = "ten"\n', "--ttl"),
    ],
)
def test_bad_config_file_is_a_one_line_usage_error(
    store: Store, processes: ProcessRegistry, tmp_path: Path, content: str, needle: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content)
    argv = [*LEADERRUN_CMD, "--config", str(config), "--backend", store.backend_url, "--", "true"]
    proc = processes.start(argv)
    assert wait_exit(proc) == 2
    err = proc.read_stderr()
    assert needle in err and len(err.strip().splitlines()) == 1


def test_verbose_env_takes_a_count(store: Store, election: str, processes: ProcessRegistry) -> None:
    quiet = start(processes, store, election, "true", env={"LEADERRUN_VERBOSE": "0"}, verbose=0)
    loud = start(processes, store, election, "true", env={"LEADERRUN_VERBOSE": "1"}, verbose=0)
    assert wait_exit(quiet) == 0 and wait_exit(loud) == 0
    assert quiet.read_stderr() == ""
    assert "elected leader" in loud.read_stderr()


# -- log format ------------------------------------------------------------------------------------


def test_json_log_format_one_object_per_line_with_the_facts(
    store: Store, election: str, processes: ProcessRegistry
) -> None:
    proc = start(
        processes, store, election, "sh", "-c", "exit 5",
        opts=("--log-format", "json", "--id", "jay"),
    )  # fmt: skip
    assert wait_exit(proc) == 5
    lines = [json.loads(line) for line in proc.read_stderr().splitlines()]
    events = {line["event"]: line for line in lines}
    assert {"campaigning", "elected", "child_started", "child_exited", "released"} <= set(events)
    assert all(line["election"] == election and line["identity"] == "jay" for line in lines)
    assert events["elected"]["token"] == events["child_started"]["token"] > 0
    assert events["child_exited"]["status"] == 5
    assert events["child_exited"]["pid"] == events["child_started"]["pid"]
    assert all({"time", "level", "message"} <= set(line) for line in lines)
