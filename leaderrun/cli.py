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
    BACKEND_OPTIONS,
    MAX_HOLDERS,
    SCHEME_OPTIONS,
    BackendURL,
    Security,
    Settings,
    Timing,
    build_timing,
    check_readable,
    default_election_name,
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

USAGE_LINES = (
    "Usage: leaderrun [OPTIONS] -- COMMAND [ARG]...",
    "       leaderrun [OPTIONS] {run|status|step-down} [ARGS]...",
)
HELP_HINT = "Try 'leaderrun --help' for the commands, or 'leaderrun run --help' for every option."

#: SPEC §4, shown under `leaderrun run --help`.
RUN_EXIT_CODES = """\b
Exit codes:
  child's    the child ran and exited by itself (128+N: killed by signal N)
  0          not elected (--no-wait, --wait-timeout) or skipped (--once-per);
             --skip-exit-code changes it
  2          usage error (bad option, duration, URL or election name)
  69         backend unreachable within --connect-timeout
  75         leadership lost while the child ran; the child was stopped
  77         the backend refused credentials or permissions (auth, ACL, TLS)
  126 / 127  COMMAND not executable / not found
  128+N      leaderrun was stopped by signal N before a child ran

\b
Durations: 500ms, 10s, 5m, 1h, 1m30s, or bare seconds.
Every option can also be set as LEADERRUN_<OPTION> or as a key of the
--config file; the command line wins, then the environment, then the file.
"""


class NoCommand(UsageError):
    """A bare `leaderrun`: the one error that gets a short usage hint after its line."""


class DefaultRunGroup(click.Group):
    """`leaderrun -- CMD` means `leaderrun run -- CMD`; options may precede the command.

    Options before the command name (`leaderrun --backend URL status`, the etcdctl/kubectl
    habit) are handed to the command as if written right after its name, ahead of its own
    arguments. So they keep their normal precedence over the environment and the config file,
    and the same option written after the command name wins (click keeps the last value).
    Without a command name, everything goes to `run` (`leaderrun -e NAME -- cmd`).
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args:
            raise NoCommand("no command given")
        if args[0] not in ("--help", "-h", "--version"):
            args = self.route(args)
        return super().parse_args(ctx, args)

    def route(self, args: list[str]) -> list[str]:
        """Move the options ahead of a command name behind it; no command name means `run`."""
        takes_value = self.option_table()
        i = 0
        while i < len(args):
            arg = args[i]
            if arg == "--" or arg == "-" or not arg.startswith("-"):
                break
            if arg.startswith("--"):
                name, eq, _ = arg.partition("=")
                if name not in takes_value:
                    break
                i += 1 if eq or not takes_value[name] else 2
                continue
            step = 0
            for j, letter in enumerate(arg[1:], start=1):  # a cluster: -vv, -eNAME, -ve NAME
                short = "-" + letter
                if short not in takes_value:
                    break
                if takes_value[short]:
                    step = 1 if j + 1 < len(arg) else 2
                    break
            else:
                step = 1
            if not step:
                break
            i += step
        if i < len(args) and args[i] in self.commands:
            return [args[i], *args[:i], *args[i + 1 :]]
        return ["run", *args]

    def option_table(self) -> dict[str, bool]:
        """Every option string of every command, and whether it takes a value."""
        table: dict[str, bool] = {}
        for command in self.commands.values():
            for param in command.params:
                if isinstance(param, click.Option):
                    for opt in (*param.opts, *param.secondary_opts):
                        table[opt] = not (param.is_flag or param.count)
        return table

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write("\n".join(USAGE_LINES) + "\n")


@click.group(
    cls=DefaultRunGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Options may come before the command (leaderrun --backend URL status). Each "
    "command's --help lists its options, their environment variables and defaults; "
    "'leaderrun run --help' also lists the exit codes.",
)
@click.version_option(__version__, prog_name="leaderrun")
def cli() -> None:
    """Run a command on exactly one machine of a cluster: the elected leader.

    \b
      leaderrun -- ./process_payments.sh
      leaderrun --backend etcd://10.0.0.1:2379,10.0.0.2:2379 -e payments -- ./pay.sh
      leaderrun --backend zk://10.0.0.1:2181 status payments
      leaderrun step-down payments
    """


def _env(name: str) -> str:
    return f"LEADERRUN_{name.upper().replace('-', '_')}"


def option(*decls: str, **attrs: Any) -> Callable[[F], F]:
    """click.option that shows its environment variable and default in --help."""
    attrs.setdefault("show_envvar", True)
    attrs.setdefault("show_default", True)
    return click.option(*decls, **attrs)


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
        option(
            "--config", metavar="FILE", envvar=_env("config"), is_eager=True,
            expose_value=False, callback=load_config,
            help="TOML file with the same keys as the long options.",
        ),
        option(
            "--backend", metavar="URL", envvar=_env("backend"), default=DEFAULT_BACKEND,
            help="etcd://h1:2379,h2:2379, etcds://... (TLS), zk://h1:2181,h2:2181[/chroot] "
            "or zks://h1:2281,...[/chroot] (TLS).",
        ),
        option(
            "--prefix", metavar="PATH", envvar=_env("prefix"), default="/leaderrun",
            help="Where elections live in the store.",
        ),
        option(
            "--connect-timeout", metavar="DURATION", envvar=_env("connect-timeout"),
            default="10s", help="Give up reaching the backend after this long (exit 69).",
        ),
        option(
            "-v", "--verbose", count=True, show_default=False,
            help="More output: state changes (-vv: debug). [env var: LEADERRUN_VERBOSE, "
            "a count: 2 = -vv, -1 = -q]",
        ),
        option("-q", "--quiet", count=True, show_default=False, help="Errors only."),
        option(
            "--log-format", envvar=_env("log-format"), type=click.Choice(FORMATS),
            default="text", help="Human text, or one JSON object per line.",
        ),
        option("--cacert", metavar="FILE", envvar=_env("cacert"),
               help="etcd, zks://: CA bundle for the servers (on etcd, turns TLS on)."),
        option("--cert", metavar="FILE", envvar=_env("cert"),
               help="etcd, zks://: client certificate (with --key; on etcd, turns TLS on)."),
        option("--key", metavar="FILE", envvar=_env("key"),
               help="etcd, zks://: client certificate's key."),
        option("--user", metavar="NAME", envvar=_env("user"),
               help="etcd: user name (password from --password-file or LEADERRUN_PASSWORD)."),
        option(
            "--password-file", metavar="FILE", envvar=_env("password-file"),
            help="etcd: file holding the password (or set LEADERRUN_PASSWORD).",
        ),
        option(
            "--zk-auth-file", metavar="FILE", envvar=_env("zk-auth-file"),
            help="ZooKeeper: file holding user:password for digest auth.",
        ),
        option(
            "--zk-tick-time", metavar="DURATION", envvar=_env("zk-tick-time"),
            help="ZooKeeper ensemble: the servers' tickTime, when their `conf` four-letter "
            "word is not allowed (default: asked from them).",
        ),
    ]  # fmt: skip
    for decorator in reversed(options):
        func = decorator(func)
    return func


@cli.command(context_settings={"allow_interspersed_args": False}, epilog=RUN_EXIT_CODES)
@common_options
@option(
    "--election",
    "-e",
    metavar="NAME",
    envvar=_env("election"),
    show_default="basename of COMMAND, unless a shell or interpreter",
    help="Election name: 1-128 of A-Z a-z 0-9 . _ -",
)
@option(
    "--id",
    "identity",
    metavar="ID",
    envvar=_env("id"),
    show_default="hostname:pid",
    help="This candidate's identity, shown to the others.",
)
@option(
    "--ttl",
    metavar="DURATION",
    envvar=_env("ttl"),
    default="10s",
    help="Lease TTL / session timeout requested from the server.",
)
@option(
    "--kill-grace",
    metavar="DURATION",
    envvar=_env("kill-grace"),
    default="3s",
    help="Time between SIGTERM and SIGKILL when stopping the child.",
)
@option(
    "--renew-interval",
    metavar="DURATION",
    envvar=_env("renew-interval"),
    show_default="TTL/4",
    help="Lease renewal interval.",
)
@option(
    "--no-wait",
    is_flag=True,
    envvar=_env("no-wait"),
    help="Exit with --skip-exit-code unless elected at once.",
)
@option(
    "--wait-timeout",
    metavar="DURATION",
    envvar=_env("wait-timeout"),
    help="Wait at most this long to be elected, else exit with --skip-exit-code.",
)
@option(
    "--skip-exit-code",
    metavar="N",
    envvar=_env("skip-exit-code"),
    type=click.IntRange(0, 255),
    default=0,
    help="Exit code when not elected or skipped.",
)
@option(
    "--once-per",
    metavar="DURATION",
    envvar=_env("once-per"),
    help="Skip if a successful run of this election started less than this ago.",
)
@option(
    "--max-holders",
    metavar="N",
    envvar=_env("max-holders"),
    type=click.IntRange(1, MAX_HOLDERS),
    default=1,
    help="Semaphore: up to N candidates hold at once, each running its own COMMAND with "
    "LEADERRUN_SLOT (0..N-1) and its own fencing token. Every candidate of the election must "
    "use the same N.",
)
@option(
    "--forever",
    is_flag=True,
    envvar=_env("forever"),
    help="Daemon mode: campaign again after every term; exit 0 on SIGTERM.",
)
@option(
    "--restart-delay",
    metavar="DURATION",
    envvar=_env("restart-delay"),
    default="1s",
    help="Pause before campaigning again under --forever.",
)
@option(
    "--metrics-addr",
    metavar="HOST:PORT",
    envvar=_env("metrics-addr"),
    help="Serve /metrics, /healthz and /leader on HOST:PORT.",
)
@click.argument(
    "command", metavar="-- COMMAND [ARG]...", nargs=-1, required=True, type=click.UNPROCESSED
)
def run(command: tuple[str, ...], **options: Any) -> None:  # fmt: skip
    """Campaign in the election and run COMMAND only while leader.

    \b
      leaderrun run -e backup-db -- sh -c 'pg_dump ... > /backup/db.sql'
    """
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


@cli.command(
    epilog="Exit codes: 0 every election shown has a leader, 3 one has none, 69 backend "
    "unreachable, 77 refused."
)
@common_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (schema 1).")
@click.argument("election", metavar="[ELECTION]", required=False)
def status(election: str | None, as_json: bool, **options: Any) -> None:
    """Who leads ELECTION (or every election under the prefix), and who waits."""
    settings = settings_for_operator(election or "", options)
    from leaderrun.operate import show_status

    sys.exit(show_status(settings, election, as_json))


@cli.command(
    "step-down",
    epilog="Exit codes: 0 handed over (or removed with --force), 3 no leader, 75 the leader "
    "did not act within --timeout, 69 backend unreachable, 77 refused.",
)
@common_options
@click.option(
    "--wait", is_flag=True, help="Also wait until the next leader's job runs (or none waits)."
)
@option(
    "--timeout",
    metavar="DURATION",
    default="60s",
    help="How long the leader may take to stop its job and hand over (else exit 75).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Delete the leader's key at once (a dead or hung leader); the next job may overlap.",
)
@click.option(
    "--slot",
    metavar="K",
    type=click.IntRange(0, MAX_HOLDERS - 1),
    help="Under --max-holders: only the holder of slot K (default: every holder in turn).",
)
@click.argument("election", metavar="ELECTION")
def step_down(
    election: str, wait: bool, timeout: str, force: bool, slot: int | None, **options: Any
) -> None:
    """Ask the leader of ELECTION to hand over: it stops its job (SIGTERM, --kill-grace,
    SIGKILL, every descendant), then releases, so the next job starts only after the old one
    is gone."""
    settings = settings_for_operator(election, options)
    from leaderrun.operate import step_down as do_step_down

    sys.exit(
        do_step_down(settings, election, parse_duration(timeout, "--timeout"), wait, force, slot)
    )


def settings_for_run(command: tuple[str, ...], options: dict[str, Any]) -> Settings:
    timing = build_timing(
        ttl=parse_duration(options["ttl"], "--ttl"),
        kill_grace=parse_duration(options["kill_grace"], "--kill-grace"),
        renew_interval=_optional_duration(options, "renew_interval"),
    )
    election = options["election"]
    if election is None:
        election = default_election_name(command[0])
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
        max_holders=int(options["max_holders"]),
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


def check_backend_options(backend: BackendURL, options: dict[str, Any]) -> None:
    """An option of another backend (`zk://... --user`) is an error naming it, not ignored."""
    uses = SCHEME_OPTIONS.get(backend.scheme)
    if uses is None:  # a third-party backend: its options are its own business
        return
    ctx = click.get_current_context()
    for name in sorted(BACKEND_OPTIONS - uses, key=lambda n: (options.get(n) is None, n)):
        if options.get(name) is None:
            continue
        flag = "--" + name.replace("_", "-")
        source = ctx.get_parameter_source(name)
        given = {
            click.core.ParameterSource.ENVIRONMENT: f"{flag} (from {_env(name)})",
            click.core.ParameterSource.DEFAULT_MAP: f"{flag} (from --config)",
        }.get(source, flag) if source is not None else flag  # fmt: skip
        schemes = ", ".join(f"{s}://" for s, used in SCHEME_OPTIONS.items() if name in used)
        raise UsageError(
            f"{given} is for {schemes} backends and {backend.scheme}:// does not use it; remove it"
        )


def _store_settings(options: dict[str, Any]) -> dict[str, Any]:
    backend = parse_backend_url(options["backend"])
    check_backend_options(backend, options)
    security, warnings = _security(options)
    SECURITY_WARNINGS[:] = warnings
    return {
        "security": security,
        "backend": backend,
        "prefix": validate_prefix(options["prefix"]),
        "connect_timeout": parse_duration(options["connect_timeout"], "--connect-timeout"),
        "verbosity": verbosity(options["verbose"], options["quiet"]),
        "log_format": options["log_format"],
        "zk_tick_time": _optional_duration(options, "zk_tick_time"),
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


def one_line(text: str) -> str:
    return " ".join(text.split())


def main(args: list[str] | None = None) -> None:
    """Console-script entry point: every error is one line `leaderrun: error: ...` with a
    distinct exit code, never a traceback."""
    quiet_grpc_core()
    try:
        code = cli.main(args=args, prog_name="leaderrun", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        code = 128 + 2
    except click.ClickException as exc:
        where = getattr(getattr(exc, "ctx", None), "command_path", "leaderrun")
        message = one_line(exc.format_message()).rstrip(".")
        click.echo(f"leaderrun: error: {message} (see '{where} --help')", err=True)
        code = ExitCode.USAGE
    except NoCommand as exc:
        click.echo(f"leaderrun: error: {exc.message}", err=True)
        click.echo(USAGE_LINES[0], err=True)
        click.echo(HELP_HINT, err=True)
        code = exc.exit_code
    except LeaderrunError as exc:
        click.echo(f"leaderrun: error: {one_line(exc.message)}", err=True)
        code = exc.exit_code
    except Exception as exc:  # a bug: still one line, and a code of its own (EX_SOFTWARE)
        click.echo(
            f"leaderrun: error: internal error: {type(exc).__name__}: {one_line(str(exc))}",
            err=True,
        )
        code = 70
    sys.exit(code or 0)
