"""The command line: thin by design.

It turns options (flags, then `LEADERRUN_*` variables) into validated `Settings` and hands them
to the guard/supervisor. Every problem with the input becomes one line on stderr and exit 2,
before anything is written to the store.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from leaderrun import __version__
from leaderrun.errors import ExitCode, LeaderrunError, UsageError
from leaderrun.log import setup_logging
from leaderrun.settings import (
    Settings,
    build_timing,
    default_identity,
    parse_backend_url,
    parse_duration,
    validate_election_name,
    validate_identity,
    validate_prefix,
)

DEFAULT_BACKEND = "etcd://127.0.0.1:2379"


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
    """


def _env(name: str) -> str:
    return f"LEADERRUN_{name}"


@cli.command(context_settings={"allow_interspersed_args": False})
@click.option(
    "--backend",
    envvar=_env("BACKEND"),
    default=DEFAULT_BACKEND,
    show_default=True,
    help="etcd://h1:2379,h2:2379",
)
@click.option(
    "--election",
    "-e",
    envvar=_env("ELECTION"),
    help="Election name [default: basename of COMMAND].",
)
@click.option(
    "--prefix",
    envvar=_env("PREFIX"),
    default="/leaderrun",
    show_default=True,
    help="Where elections live in the store.",
)
@click.option(
    "--id", "identity", envvar=_env("ID"), help="This candidate's identity [default: hostname:pid]."
)
@click.option(
    "--ttl",
    envvar=_env("TTL"),
    default="10s",
    show_default=True,
    help="Lease TTL requested from the server.",
)
@click.option(
    "--kill-grace",
    envvar=_env("KILL_GRACE"),
    default="3s",
    show_default=True,
    help="Time between SIGTERM and SIGKILL when stopping the child.",
)
@click.option(
    "--renew-interval",
    envvar=_env("RENEW_INTERVAL"),
    help="Lease renewal interval [default: TTL/4].",
)
@click.option(
    "--connect-timeout",
    envvar=_env("CONNECT_TIMEOUT"),
    default="10s",
    show_default=True,
    help="Give up reaching the backend after this long (exit 69).",
)
@click.option("-v", "--verbose", count=True, help="More output: -v state changes, -vv debug.")
@click.option("-q", "--quiet", count=True, help="Errors only.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(command: tuple[str, ...], **options: Any) -> None:
    """Campaign in the election and run COMMAND only while leader."""
    settings = settings_from_options(command, options)
    setup_logging(settings.verbosity)
    from leaderrun.guard import run_guarded

    sys.exit(run_guarded(settings))


def settings_from_options(command: tuple[str, ...], options: dict[str, Any]) -> Settings:
    ttl = parse_duration(options["ttl"], "--ttl")
    timing = build_timing(
        ttl=ttl,
        kill_grace=parse_duration(options["kill_grace"], "--kill-grace"),
        renew_interval=(
            parse_duration(options["renew_interval"], "--renew-interval")
            if options["renew_interval"]
            else None
        ),
    )
    election = options["election"]
    if election is None:
        election = validate_election_name(os.path.basename(command[0]), derived_from_command=True)
    else:
        election = validate_election_name(election)
    return Settings(
        backend=parse_backend_url(options["backend"]),
        election=election,
        prefix=validate_prefix(options["prefix"]),
        identity=validate_identity(options["identity"] or default_identity()),
        timing=timing,
        connect_timeout=parse_duration(options["connect_timeout"], "--connect-timeout"),
        command=command,
        verbosity=verbosity(options["verbose"], options["quiet"]),
    )


def verbosity(verbose: int, quiet: int) -> int:
    if verbose or quiet:
        return verbose - quiet
    raw = os.environ.get(_env("VERBOSE"), "0").strip() or "0"
    try:
        return int(raw)
    except ValueError:
        raise UsageError(
            f"LEADERRUN_VERBOSE: {raw!r} is not a number; use -1 (quiet), 0, 1 (-v) or 2 (-vv)"
        ) from None


def main() -> None:
    """Console-script entry point: one line per error, a distinct exit code, no traceback."""
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
