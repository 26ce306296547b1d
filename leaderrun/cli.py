"""The command line: thin by design.

It turns options into validated `Settings` and hands them on: `run` to the guard/supervisor,
`status` and `step-down` to `leaderrun.operate`. Each option comes from the command line, else
its `LEADERRUN_*` variable, else the `--config` TOML file (click's own precedence: the file
fills `default_map`). Every problem with the input becomes one line on stderr and exit 2,
before anything is written to the store.
"""

from __future__ import annotations

import logging
import os
import sys
import tomllib
from collections.abc import Callable
from typing import Any, TypeVar

import click

from leaderrun import __version__
from leaderrun.errors import ExitCode, LeaderrunError, UsageError
from leaderrun.log import FORMATS, setup_logging
from leaderrun.settings import (
    Security,
    Settings,
    Timing,
    build_timing,
    check_readable,
    default_identity,
    parse_backend_url,
    parse_duration,
    read_secret_file,
    validate_election_name,
    validate_identity,
    validate_prefix,
)

DEFAULT_BACKEND = "etcd://127.0.0.1:2379"
#: Found while parsing, logged once logging is set up.
SECURITY_WARNINGS: list[str] = []
F = TypeVar("F", bound=Callable[..., Any])


class DefaultRunGroup(click.Group):
    """`leaderrun -- CMD` means `leaderrun run -- CMD`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultRunGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="leaderrun")
def cli() -> None:
    """Run a command on exactly one machine of a cluster: the elected leader.

    \b
      leaderrun -- ./process_payments.sh
      leaderrun --backend etcd://10.0.0.1:2379,10.0.0.2:2379 -e payments -- ./pay.sh
      leaderrun status payments
    """


def _env(name: str) -> str:
    return f"LEADERRUN_{name.upper().replace('-', '_')}"


def load_config(ctx: click.Context, param: click.Parameter, path: str | None) -> str | None:
    """Fill click's default_map from the TOML file, so flags and env vars still win."""
    if not path:
        return path
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise UsageError(f"--config: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--config: {path} is not valid TOML: {exc}") from None
    known = {
        opt[2:].replace("-", "_"): param.name
        for param in ctx.command.params
        if isinstance(param, click.Option) and param.name != "config"
        for opt in param.opts
        if opt.startswith("--")
    }
    defaults: dict[str, Any] = {}
    for key, value in document.items():
        name = known.get(key.replace("-", "_"))
        if name is None or isinstance(value, dict | list):
            raise UsageError(
                f"--config: unknown key {key!r} in {path}; "
                f"valid keys are the long options of `leaderrun {ctx.command.name}`"
            )
        defaults[name] = value if isinstance(value, bool | int) else str(value)
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return path


def common_options(func: F) -> F:
    """Options every command shares: where the store is and how to talk."""
    options = [
        click.option(
            "--config",
            envvar=_env("config"),
            is_eager=True,
            expose_value=False,
            callback=load_config,
            help="TOML file with the same keys as the long options.",
        ),
        click.option(
            "--backend", envvar=_env("backend"), default=DEFAULT_BACKEND, show_default=True,
            help="etcd://h1:2379,h2:2379",
        ),
        click.option(
            "--prefix", envvar=_env("prefix"), default="/leaderrun", show_default=True,
            help="Where elections live in the store.",
        ),
        click.option(
            "--connect-timeout", envvar=_env("connect-timeout"), default="10s",
            show_default=True, help="Give up reaching the backend after this long (exit 69).",
        ),
        click.option("-v", "--verbose", count=True, help="More output (-vv: debug)."),
        click.option("-q", "--quiet", count=True, help="Errors only."),
        click.option(
            "--log-format", envvar=_env("log-format"), type=click.Choice(FORMATS),
            default="text", show_default=True, help="Human text, or one JSON object per line.",
        ),
        click.option("--cacert", envvar=_env("cacert"), help="etcd: CA bundle for the server."),
        click.option("--cert", envvar=_env("cert"), help="etcd: client certificate (with --key)."),
        click.option("--key", envvar=_env("key"), help="etcd: client certificate's key."),
        click.option("--user", envvar=_env("user"), help="etcd: user name (password by file/env)."),
        click.option(
            "--password-file", envvar=_env("password-file"),
            help="etcd: file holding the password (or set LEADERRUN_PASSWORD).",
        ),
        click.option(
            "--zk-auth-file", envvar=_env("zk-auth-file"),
            help="ZooKeeper: file holding user:password for digest auth.",
        ),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


@cli.command(context_settings={"allow_interspersed_args": False})
@common_options
@click.option(
    "--election",
    "-e",
    envvar=_env("election"),
    help="Election name [default: basename of COMMAND].",
)
@click.option(
    "--id", "identity", envvar=_env("id"), help="This candidate's identity [default: hostname:pid]."
)
@click.option(
    "--ttl",
    envvar=_env("ttl"),
    default="10s",
    show_default=True,
    help="Lease TTL / session timeout requested from the server.",
)
@click.option(
    "--kill-grace",
    envvar=_env("kill-grace"),
    default="3s",
    show_default=True,
    help="Time between SIGTERM and SIGKILL when stopping the child.",
)
@click.option(
    "--renew-interval",
    envvar=_env("renew-interval"),
    help="Lease renewal interval [default: TTL/4].",
)
@click.option(
    "--no-wait",
    is_flag=True,
    envvar=_env("no-wait"),
    help="Exit with --skip-exit-code unless elected at once.",
)
@click.option(
    "--wait-timeout",
    envvar=_env("wait-timeout"),
    help="Wait at most this long to be elected, else exit with --skip-exit-code.",
)
@click.option(
    "--skip-exit-code",
    envvar=_env("skip-exit-code"),
    type=click.IntRange(0, 255),
    default=0,
    show_default=True,
    help="Exit code when not elected or skipped.",
)
@click.option(
    "--once-per",
    envvar=_env("once-per"),
    help="Skip if a successful run of this election started less than this ago.",
)
@click.option(
    "--forever",
    is_flag=True,
    envvar=_env("forever"),
    help="Daemon mode: campaign again after every term; exit 0 on SIGTERM.",
)
@click.option(
    "--restart-delay",
    envvar=_env("restart-delay"),
    default="1s",
    show_default=True,
    help="Pause before campaigning again under --forever.",
)
@click.option(
    "--metrics-addr", envvar=_env("metrics-addr"), help="Serve Prometheus metrics on HOST:PORT."
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(command: tuple[str, ...], **options: Any) -> None:  # fmt: skip
    """Campaign in the election and run COMMAND only while leader."""
    settings = settings_for_run(command, options)
    setup_logging(
        settings.verbosity,
        settings.log_format,
        election=settings.election,
        identity=settings.identity,
    )
    log_security_warnings()
    from leaderrun.guard import run_guarded

    sys.exit(run_guarded(settings))


@cli.command()
@common_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (schema 1).")
@click.argument("election", required=False)
def status(election: str | None, as_json: bool, **options: Any) -> None:
    """Who leads ELECTION (or every election under the prefix), and who waits."""
    settings = settings_for_operator(election or "", options)
    from leaderrun.operate import show_status

    sys.exit(show_status(settings, election, as_json))


@cli.command("step-down")
@common_options
@click.option(
    "--wait", is_flag=True, help="Also wait until the next leader's job runs (or none waits)."
)
@click.option(
    "--timeout",
    default="60s",
    show_default=True,
    help="How long the leader may take to stop its job and hand over (else exit 75).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Delete the leader's key at once (a dead or hung leader); the next job may overlap.",
)
@click.argument("election")
def step_down(election: str, wait: bool, timeout: str, force: bool, **options: Any) -> None:
    """Ask the leader of ELECTION to hand over: it stops its job (SIGTERM, --kill-grace,
    SIGKILL, every descendant), then releases, so the next job starts only after the old one
    is gone. Exit 0 handed over, 3 no leader, 75 the leader did not act within --timeout."""
    settings = settings_for_operator(election, options)
    from leaderrun.operate import step_down as do_step_down

    sys.exit(do_step_down(settings, election, parse_duration(timeout, "--timeout"), wait, force))


def settings_for_run(command: tuple[str, ...], options: dict[str, Any]) -> Settings:
    timing = build_timing(
        ttl=parse_duration(options["ttl"], "--ttl"),
        kill_grace=parse_duration(options["kill_grace"], "--kill-grace"),
        renew_interval=_optional_duration(options, "renew_interval"),
    )
    election = options["election"]
    if election is None:
        election = validate_election_name(os.path.basename(command[0]), derived_from_command=True)
    else:
        election = validate_election_name(election)
    if options["no_wait"] and options["wait_timeout"]:
        raise UsageError("--no-wait and --wait-timeout exclude each other; keep one")
    if options["forever"] and (
        options["no_wait"] or options["wait_timeout"] or options["once_per"]
    ):
        raise UsageError("--forever waits for ever; drop --no-wait/--wait-timeout/--once-per")
    return Settings(
        **_store_settings(options),
        election=election,
        identity=validate_identity(options["identity"] or default_identity()),
        timing=timing,
        command=command,
        no_wait=bool(options["no_wait"]),
        wait_timeout=_optional_duration(options, "wait_timeout"),
        skip_exit_code=int(options["skip_exit_code"]),
        once_per=_optional_duration(options, "once_per"),
        forever=bool(options["forever"]),
        restart_delay=parse_duration(options["restart_delay"], "--restart-delay"),
        metrics_addr=options["metrics_addr"],
    )


def settings_for_operator(election: str, options: dict[str, Any]) -> Settings:
    if election:
        validate_election_name(election)
    settings = Settings(
        **_store_settings(options),
        election=election,
        identity=default_identity(),
        timing=Timing(ttl=10.0, kill_grace=3.0, renew_interval=2.5),
    )
    setup_logging(settings.verbosity, settings.log_format)
    log_security_warnings()
    return settings


def log_security_warnings() -> None:
    for warning in SECURITY_WARNINGS:
        logging.getLogger("leaderrun").warning("%s", warning)


def _security(options: dict[str, Any]) -> tuple[Security, list[str]]:
    """Credentials from files or the environment (never from the command line, where any user
    could read them in the process list); and warnings to log once logging is set up."""
    warnings = []
    password = os.environ.get("LEADERRUN_PASSWORD") or None
    if options["password_file"]:
        password, exposed = read_secret_file(options["password_file"], "--password-file")
        if exposed:
            warnings.append(
                f"--password-file {options['password_file']} is readable by group or others; "
                "chmod 600 it"
            )
    if options["password_file"] and not options["user"]:
        raise UsageError("--password-file was given but no --user; add --user NAME")
    if options["user"] and not password:
        raise UsageError(
            f"--user {options['user']} needs a password: --password-file FILE or LEADERRUN_PASSWORD"
        )
    if bool(options["cert"]) != bool(options["key"]):
        raise UsageError("--cert and --key go together; give both or neither")
    zk_auth = None
    if options["zk_auth_file"]:
        zk_auth, exposed = read_secret_file(options["zk_auth_file"], "--zk-auth-file")
        if ":" not in zk_auth:
            raise UsageError(f"--zk-auth-file {options['zk_auth_file']} must hold user:password")
        if exposed:
            warnings.append(
                f"--zk-auth-file {options['zk_auth_file']} is readable by group or others; "
                "chmod 600 it"
            )
    security = Security(
        cacert=check_readable(options["cacert"], "--cacert"),
        cert=check_readable(options["cert"], "--cert"),
        key=check_readable(options["key"], "--key"),
        user=options["user"],
        password=password if options["user"] else None,
        zk_auth=zk_auth,
    )
    return security, warnings


def _store_settings(options: dict[str, Any]) -> dict[str, Any]:
    security, warnings = _security(options)
    SECURITY_WARNINGS[:] = warnings
    return {
        "security": security,
        "backend": parse_backend_url(options["backend"]),
        "prefix": validate_prefix(options["prefix"]),
        "connect_timeout": parse_duration(options["connect_timeout"], "--connect-timeout"),
        "verbosity": verbosity(options["verbose"], options["quiet"]),
        "log_format": options["log_format"],
    }


def _optional_duration(options: dict[str, Any], name: str) -> float | None:
    value = options[name]
    return parse_duration(str(value), "--" + name.replace("_", "-")) if value else None


def verbosity(verbose: int, quiet: int) -> int:
    """-v/-q on the command line, else LEADERRUN_VERBOSE (a count), else the config file."""
    ctx = click.get_current_context()
    from_flags = any(
        ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
        for name in ("verbose", "quiet")
    )
    raw = os.environ.get(_env("verbose"), "").strip()
    if from_flags or not raw:
        return int(verbose) - int(quiet)
    try:
        return int(raw)
    except ValueError:
        raise UsageError(
            f"LEADERRUN_VERBOSE: {raw!r} is not a number; use -1 (quiet), 0, 1 (-v) or 2 (-vv)"
        ) from None


def quiet_grpc_core() -> None:
    """gRPC's C core prints multi-line TLS and connection errors on stderr by itself; ours
    already say what failed, in one line. The child still gets the user's own setting."""
    if "GRPC_VERBOSITY" not in os.environ:
        os.environ["GRPC_VERBOSITY"] = "NONE"
        os.environ["LEADERRUN_GRPC_VERBOSITY_SET"] = "1"


def main() -> None:
    """Console-script entry point: one line per error, a distinct exit code, no traceback."""
    quiet_grpc_core()
    try:
        code = cli.main(prog_name="leaderrun", standalone_mode=False)
    except click.exceptions.Abort:
        code = 128 + 2
    except click.ClickException as exc:
        click.echo(f"leaderrun: error: {exc.format_message()} (see leaderrun --help)", err=True)
        code = ExitCode.USAGE
    except LeaderrunError as exc:
        click.echo(f"leaderrun: error: {exc.message}", err=True)
        code = exc.exit_code
    sys.exit(code or 0)
