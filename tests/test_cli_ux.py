"""What a new user or an SRE meets first (issue 13): default election names, option placement,
options of the other backend, one error format, --help, messages, `status` in 80 columns and
the one line a failed cron job prints. CLI tests run the real `python -m leaderrun`."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from helpers import LEADERRUN_CMD, ProcessRegistry, clean_env, wait_for
from runs import child_pid, long_job, operator, sh, start, status, wait_exit
from servers import EtcdCluster, ZkEnsemble, free_port
from stores import store_for

from leaderrun import cli, operate
from leaderrun.backends.etcd import refusal_error
from leaderrun.settings import is_interpreter

ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d")


def leaderrun(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`leaderrun ARGS` to completion, output captured."""
    return subprocess.run(
        [*LEADERRUN_CMD, *args],
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single `leaderrun: error: ...` line a failed call printed (and nothing else)."""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("leaderrun: error: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def dead_url(scheme: str) -> str:
    return f"{scheme}://127.0.0.1:{free_port()}"


# -- 1. no default election name from a shell or interpreter --------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ("sh", "-c", "backup-db"),
        ("/bin/bash", "-c", "rotate-logs"),
        ("python3", "job.py"),
        ("/usr/bin/python3.11", "job.py"),
        ("env", "FOO=1", "backup-db"),
        ("nice", "backup-db"),
        ("perl", "x.pl"),
    ],
    ids=lambda c: os.path.basename(c[0]),
)
def test_interpreter_gives_no_default_election(etcd: EtcdCluster, command: tuple[str, ...]) -> None:
    """Before: `-- sh -c 'backup-db'` and `-- sh -c 'rotate-logs'` shared election `sh`."""
    prefix = f"/ux-{os.getpid()}-{free_port()}"
    done = leaderrun("--backend", etcd.backend_url, "--prefix", prefix, "--", *command)
    assert done.returncode == 2
    line = one_error_line(done)
    assert "--election" in line and "shell or interpreter" in line
    assert store_for(etcd).keys_under(prefix) == []


def test_interpreter_with_election_runs(etcd: EtcdCluster, election: str) -> None:
    done = leaderrun("--backend", etcd.backend_url, "-e", election, "--", "sh", "-c", "exit 0")
    assert (done.returncode, done.stderr) == (0, "")


def test_interpreter_list_is_the_documented_one() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name in ("sh", "bash", "python3", "env", "node", "sudo", "nohup", "timeout"):
        assert is_interpreter(name)
        assert f"`{name}`" in readme, name


# -- 2. options before the subcommand -------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "routed"),
    [
        (["--backend", "U", "status"], ["status", "--backend", "U"]),
        (["--backend=U", "-v", "status", "x"], ["status", "--backend=U", "-v", "x"]),
        (["--backend", "U", "step-down", "x"], ["step-down", "--backend", "U", "x"]),
        (["-vv", "--json", "status"], ["status", "-vv", "--json"]),
        (["--backend", "U", "--", "status"], ["run", "--backend", "U", "--", "status"]),
        (["-e", "status", "--", "true"], ["run", "-e", "status", "--", "true"]),
        (["-vestatus", "--", "true"], ["run", "-vestatus", "--", "true"]),
        (["-ve", "status", "--", "true"], ["run", "-ve", "status", "--", "true"]),
        (["--", "true"], ["run", "--", "true"]),
        (["true"], ["run", "true"]),
        (["--backend", "U", "sh", "-c", "x"], ["run", "--backend", "U", "sh", "-c", "x"]),
        (["--backend", "U", "run", "--", "x"], ["run", "--backend", "U", "--", "x"]),
        (["--nope", "status"], ["run", "--nope", "status"]),
        (["status", "--backend", "U"], ["status", "--backend", "U"]),
    ],
)
def test_options_before_the_command_are_handed_to_it(argv: list[str], routed: list[str]) -> None:
    group = cli.cli
    assert isinstance(group, cli.DefaultRunGroup)
    assert group.route(argv) == routed


def test_backend_before_status_and_step_down(etcd: EtcdCluster, election: str) -> None:
    """Before: `leaderrun --backend URL status` ran a COMMAND named `status` (exit 127)."""
    done = leaderrun("--backend", etcd.backend_url, "status", "--json", election)
    assert done.returncode == 3, done.stderr
    assert json.loads(done.stdout)["elections"][0]["leader"] is None

    done = leaderrun("--backend", etcd.backend_url, "step-down", election)
    assert done.returncode == 3 and "no leader" in done.stderr

    # the subcommand's own command line wins over what came before it
    done = leaderrun(
        "--backend", dead_url("etcd"), "status", "--backend", etcd.backend_url, election
    )
    assert done.returncode == 3, done.stderr
    # ... and what came before it wins over the environment, as after the command name
    done = leaderrun(
        "--backend", etcd.backend_url, "status", election,
        env={"LEADERRUN_BACKEND": dead_url("etcd")},
    )  # fmt: skip
    assert done.returncode == 3, done.stderr


def test_run_options_before_the_double_dash(etcd: EtcdCluster, election: str) -> None:
    marker = f"ran-{election}"
    done = leaderrun(
        "-e", election, "--", "echo", marker, env={"LEADERRUN_BACKEND": etcd.backend_url}
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, marker + "\n", "")
    done = leaderrun("--backend", etcd.backend_url, "-e", election, "--", "echo", marker)
    assert (done.returncode, done.stdout) == (0, marker + "\n")


# -- 3. options of the other backend --------------------------------------------------------------


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text("user:pw-not-shown\n")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("command", ["run", "status", "step-down"])
@pytest.mark.parametrize(
    ("scheme", "option"),
    [
        ("zk", "--user"),
        ("zk", "--password-file"),
        ("zk", "--cacert"),
        ("zk", "--cert"),
        ("zk", "--key"),
        ("etcd", "--zk-auth-file"),
        ("etcds", "--zk-auth-file"),
    ],
)
def test_option_of_the_other_backend_is_a_usage_error(
    scheme: str, option: str, command: str, secret_file: Path
) -> None:
    """Before: `zk://... --user u --password-file f` ran over plaintext without a word."""
    value = "app" if option == "--user" else str(secret_file)
    tail = {"run": ["-e", "job", "--", "true"], "status": [], "step-down": ["job"]}[command]
    done = leaderrun(command, "--backend", dead_url(scheme), option, value, *tail)
    assert done.returncode == 2
    line = one_error_line(done)
    assert option in line and f"{scheme}://" in line
    assert "pw-not-shown" not in done.stderr


def test_option_of_the_other_backend_from_the_environment_is_named(secret_file: Path) -> None:
    done = leaderrun(
        "--backend", dead_url("zk"), "-e", "job", "--", "true",
        env={"LEADERRUN_USER": "app", "LEADERRUN_PASSWORD_FILE": str(secret_file)},
    )  # fmt: skip
    assert done.returncode == 2
    line = one_error_line(done)
    assert "LEADERRUN_PASSWORD_FILE" in line or "LEADERRUN_USER" in line


# -- 4. one error format --------------------------------------------------------------------------


def test_bare_leaderrun_prints_a_three_line_hint() -> None:
    """Before: 16 lines of help, prefixed "leaderrun: error: Usage: ..."."""
    done = leaderrun()
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 3, done.stderr
    assert lines[0].startswith("leaderrun: error: ")
    assert "--help" in lines[2]


@pytest.mark.parametrize(
    "args",
    [
        ["--no-such-option", "--", "true"],
        ["status", "--no-such-option"],
        ["step-down"],
        ["run"],
        ["-e", "job", "--ttl", "soon", "--", "true"],
        ["--backend", "zk//h", "-e", "job", "--", "true"],
        ["--", "sh", "-c", "true"],
    ],
)
def test_usage_errors_are_one_line(args: list[str]) -> None:
    done = leaderrun(*args)
    assert done.returncode == 2
    one_error_line(done)


def test_unreachable_backend_error_is_one_line() -> None:
    done = leaderrun("--backend", dead_url("etcd"), "--connect-timeout", "1s", "status")
    assert done.returncode == 69
    one_error_line(done)


def test_command_not_found_error_has_the_same_format(etcd: EtcdCluster, election: str) -> None:
    done = leaderrun("--backend", etcd.backend_url, "-e", election, "--", "no-such-cmd-xyz")
    assert done.returncode == 127
    one_error_line(done)


def test_internal_error_is_one_line_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli.cli, "main", broken)
    with pytest.raises(SystemExit) as exited:
        cli.main([])
    assert exited.value.code == 70
    err = capsys.readouterr().err
    assert err == "leaderrun: error: internal error: RuntimeError: boom second line\n"


# -- 5. --help ------------------------------------------------------------------------------------


def test_help_lists_the_commands() -> None:
    done = leaderrun("--help")
    assert done.returncode == 0
    for command in ("run", "status", "step-down"):
        assert re.search(rf"^\s+{command}\s", done.stdout, re.MULTILINE), done.stdout


def test_run_help_lists_every_option_env_var_default_and_exit_code() -> None:
    """Before: `leaderrun --help` listed no run option, env var or exit code."""
    done = leaderrun("run", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())  # click wraps long lines
    for param in cli.run.params:
        if not isinstance(param, cli.click.Option):
            continue
        assert param.opts[-1] in text
        if param.envvar:
            assert str(param.envvar) in text
    assert "TEXT" not in done.stdout
    for metavar in ("DURATION", "URL", "NAME", "HOST:PORT", "FILE", " N "):
        assert metavar in text, metavar
    assert "default: 10s" in text and "default: etcd://127.0.0.1:2379" in text
    for code in ("69", "75", "77", "126 / 127", "128+N"):
        assert code in text
    assert "LEADERRUN_VERBOSE" in text
    assert all(len(line) <= 80 for line in done.stdout.splitlines())


def test_help_of_operator_commands() -> None:
    for command in ("status", "step-down"):
        done = leaderrun(command, "--help")
        assert done.returncode == 0 and "TEXT" not in done.stdout
        assert "LEADERRUN_BACKEND" in done.stdout and "Exit codes" in done.stdout


# -- 6. messages ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "suggestion"),
    [
        ("zk//10.0.0.1", "zk://10.0.0.1:2181"),
        ("zk:/10.0.0.1:2182/jobs", "zk://10.0.0.1:2182/jobs"),
        ("zookeeper//zk1,zk2", "zk://zk1:2181,zk2"),
        ("etcd//10.0.0.1", "etcd://10.0.0.1:2379"),
        ("10.0.0.1:2181", "zk://10.0.0.1:2181"),
    ],
)
def test_missing_scheme_separator_suggests_a_url(url: str, suggestion: str) -> None:
    done = leaderrun("--backend", url, "-e", "job", "--", "true")
    assert done.returncode == 2
    assert f"did you mean {suggestion}?" in one_error_line(done)


def test_zookeeper_scheme_is_an_alias_of_zk(zk: ZkEnsemble, election: str) -> None:
    url = zk.backend_url.replace("zk://", "zookeeper://", 1)
    assert url.startswith("zookeeper://")
    done = leaderrun("--backend", url, "-e", election, "--", "echo", "ok")
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")
    done = leaderrun("--backend", url, "status", "--json", election)
    assert done.returncode == 3 and json.loads(done.stdout)["backend"].startswith("zk://")


def test_compound_duration_on_the_command_line(etcd: EtcdCluster, election: str) -> None:
    done = leaderrun(
        "--backend", etcd.backend_url, "-e", election, "--ttl", "1m30s", "--kill-grace",
        "2s500ms", "--", "true",
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "etcdserver: authentication failed, invalid user ID or password",
        ),
        (grpc.StatusCode.UNAUTHENTICATED, "etcdserver: user name is empty"),
    ],
)  # fmt: skip
def test_wrong_password_is_not_called_a_permission_problem(
    code: grpc.StatusCode, details: str
) -> None:
    """Before: "... check --user and the role's permissions on the prefix"."""
    message = refusal_error(FakeRpcError(code, details)).message
    assert "permission" not in message and "password" in message


def test_permission_denied_points_at_the_role() -> None:
    error = FakeRpcError(grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
    message = refusal_error(error).message
    assert "permissions" in message and "password" not in message


# -- 7. status in 80 columns ----------------------------------------------------------------------


def test_status_plain_fits_80_columns_with_relative_times(
    etcd: EtcdCluster, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """Before: `<election>: <id> (host ..., pid ..., child pid ...), token ..., since
    2026-12-03T08:35:09+01:00, lease 9s left` on one line of 130+ columns."""
    store = store_for(etcd)
    election = f"ux-{secrets.token_hex(3)}"
    job, pid_file, done = long_job(tmp_path, ignore_term=False)
    long_id = "payments-worker-" + "x" * 70
    a = start(processes, store, election, *job, opts=("--id", long_id), name="a")
    child_pid(pid_file)
    b = start(processes, store, election, *job, opts=("--id", "node-b"), name="b")
    wait_for(lambda: store.queued(election, 2), 15, message="two candidates queued")

    plain = operator(store, "status", election)
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert lines[0].startswith(f"{election}: payments-worker-x") and "…" in lines[0]
    assert re.search(r", token \d+", lines[0]), lines[0]
    assert lines[1].startswith("  waiting 1: node-b (host ")
    assert re.search(r"queued (just now|\d+ s ago)", lines[1]), lines[1]
    assert len(lines) == 2, plain.stdout
    assert all(len(line) <= 80 for line in lines), plain.stdout
    assert not ISO_TIME.search(plain.stdout)

    _, document = status(store, election)  # JSON keeps its ISO times and full identity
    leader = document["elections"][0]["leader"]
    assert leader["id"] == long_id and ISO_TIME.match(leader["leader_since"])
    done.touch()
    assert [wait_exit(p) for p in (a, b)] == [0, 0]


def test_relative_times() -> None:
    now = datetime(2026, 12, 3, 8, 0, 0).astimezone().timestamp()

    def iso(seconds_ago: float) -> str:
        return datetime.fromtimestamp(now - seconds_ago).astimezone().isoformat()

    assert operate.ago(iso(12), now) == "12 s ago"
    assert operate.ago(iso(3 * 60), now) == "3 min ago"
    assert operate.ago(iso(5 * 3600), now) == "5 h ago"
    assert operate.ago(iso(3 * 86400), now) == "3 days ago"
    assert operate.ago(iso(-2), now) == "just now"
    assert operate.ago(iso(-3600), now) == "in 60 min (clock skew?)"
    assert operate.span(2.1) == "2.1 s"


def test_plain_status_of_odd_documents_fits(capsys: pytest.CaptureFixture[str]) -> None:
    since = datetime.now().astimezone().isoformat(timespec="seconds")
    leader = {
        "token": 12345678901234, "key": "k", "id": "i" * 300, "foreign": False,
        "host": "h" * 100, "pid": 1, "child_pid": 2, "queued": since, "leader_since": since,
        "lease_ttl_left": 10,
    }  # fmt: skip
    foreign = {"token": 7, "key": "k", "id": None, "foreign": True, "raw": "\\x00" * 200}
    document = {
        "prefix": "/leaderrun",
        "elections": [
            {
                "name": "e",
                "leader": leader,
                "step_down": {"token": 1, "by": "o" * 200, "host": "h", "asked_seconds_ago": 3},
                "waiting": [foreign, leader],
                "last_run": {"foreign": False, "id": "r" * 200, "start": since, "end": since},
            }
        ],
    }
    operate.print_plain(document)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    assert all(len(line) <= 80 for line in lines), lines


# -- 8. a failed cron job says so in one line -----------------------------------------------------


def test_failed_job_prints_one_line_and_a_good_one_nothing(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry
) -> None:
    """Before (issue 13): rc 1 and nothing on stderr, so cron mailed nothing."""
    store = store_for(etcd)
    failed = start(processes, store, election, *sh("exit 3"), verbose=0)
    assert wait_exit(failed) == 3
    lines = failed.read_stderr().strip().splitlines()
    assert len(lines) == 1 and "status 3" in lines[0], lines

    fine = start(processes, store, election, "true", verbose=0)
    assert wait_exit(fine) == 0
    assert fine.output() == ("", "")
