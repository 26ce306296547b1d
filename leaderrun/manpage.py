"""leaderrun(1) in roff, generated from the click commands, so it cannot drift from --help.

    python -m leaderrun.manpage [build/leaderrun.1]

NAME and SYNOPSIS come from the group; every command gets its help text, its own options
(with metavar, environment variable and default) and its epilog; the options every command
shares are listed once; EXIT STATUS is the table under `leaderrun run --help`.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import click

DEFAULT_OUTPUT = Path("build") / "leaderrun.1"

#: Variables leaderrun reads that are not an option's.
OTHER_ENVIRONMENT = (
    ("LEADERRUN_PASSWORD", "etcd password when no --password-file is given."),
    (
        "LEADERRUN_CGROUP",
        "off: never start the child in a cgroup of its own (the /proc sweep alone stops it).",
    ),
    (
        "CREDENTIALS_DIRECTORY",
        "Set by systemd's LoadCredential=: a --password-file or --zk-auth-file that is a bare "
        "name (no '/') is read from this directory.",
    ),
    (
        "NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID",
        "Set by systemd (Type=notify, WatchdogSec=): READY=1, STATUS= and WATCHDOG=1 "
        "notifications. Not passed on to COMMAND.",
    ),
)

#: The environment of COMMAND (SPEC).
CHILD_ENVIRONMENT = (
    ("LEADERRUN_FENCING_TOKEN", "increases with every new term; guard writes with it."),
)

SEE_ALSO = "etcdctl(1), flock(1), systemd.exec(5), systemd.service(5), systemd-analyze(1)"


def escape(text: str) -> str:
    """Roff-safe text: backslashes, option dashes, and control characters at a line start."""
    text = text.replace("\\", "\\e")
    text = re.sub(r"(?<![\w\\])-", r"\\-", text)
    return re.sub(r"(?m)^([.'])", r"\\&\1", text)


def paragraphs(text: str) -> Iterable[tuple[bool, str]]:
    """click's help text as (preformatted?, text) blocks: a block after a line holding only
    `\\b` keeps its line breaks, the others are rewrapped (click's own rule)."""
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.split("\n")
        if lines[0].strip() == "\b":
            yield True, "\n".join(lines[1:])
        elif block.strip():
            yield False, " ".join(line.strip() for line in lines)


def render_text(text: str) -> list[str]:
    out: list[str] = []
    for preformatted, block in paragraphs(text):
        if preformatted:
            lines = block.split("\n")
            indent = min((len(x) - len(x.lstrip()) for x in lines if x.strip()), default=0)
            out += [".PP", ".nf", *(escape(x[indent:]) for x in lines), ".fi"]
        else:
            out += [".PP", escape(block)]
    return out


def option_lines(param: click.Option, ctx: click.Context) -> list[str]:
    """`.TP` entry: the option's names and metavar, its help, environment variable, default."""
    record = param.get_help_record(ctx)
    names = record[0] if record else ", ".join(param.opts)
    out = [".TP", f"\\fB{escape(names)}\\fR"]
    out.append(escape(param.help or ""))
    details = []
    envvars = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
    if envvars:
        details.append("Environment: " + ", ".join(f"\\fB{escape(e)}\\fR" for e in envvars) + ".")
    default = default_text(param)
    if default:
        details.append(f"Default: {escape(default)}.")
    if details:
        out += [".br", " ".join(details)]
    return out


def default_text(param: click.Option) -> str | None:
    if isinstance(param.show_default, str):
        return param.show_default
    default = param.default
    # Not shown: flags, counts, no default (None, or click >= 8.3's UNSET sentinel), callables.
    if param.is_flag or param.count or param.show_default is False:
        return None
    if isinstance(default, bool) or not isinstance(default, str | int | float):
        return None
    return str(default)


def usage(command: click.Command, ctx: click.Context) -> str:
    pieces = command.collect_usage_pieces(ctx)
    return " ".join(["leaderrun", command.name or "", *pieces])


def exit_codes(epilog: str) -> list[tuple[str, str]]:
    """The `Exit codes:` table of an epilog: (code, meaning) rows; continuation lines (deeper
    indent, no code column) join the row above."""
    rows: list[tuple[str, str]] = []
    inside = False
    for line in epilog.splitlines():
        if line.strip() == "Exit codes:":
            inside = True
            continue
        if not inside:
            continue
        if not line.strip() or line.strip() == "\b":
            break
        match = re.match(r"\s{1,4}(\S+(?: / \S+)?)\s{2,}(.*)", line)
        if match:
            rows.append((match[1], match[2].strip()))
        elif rows:
            code, meaning = rows[-1]
            rows[-1] = (code, f"{meaning} {line.strip()}")
    return rows


def generate(group: click.Group | None = None, date: datetime.date | None = None) -> str:
    """The whole man page."""
    from leaderrun import __version__

    if group is None:
        from leaderrun.cli import cli

        group = cli

    date = date or _build_date()
    root = click.Context(group, info_name="leaderrun")
    commands = [group.commands[name] for name in group.list_commands(root)]
    contexts = {c.name: click.Context(c, info_name=c.name, parent=root) for c in commands}
    options = {
        c.name: [p for p in c.params if isinstance(p, click.Option) and not p.hidden]
        for c in commands
    }
    shared = set.intersection(*({p.name for p in opts} for opts in options.values()))
    summary = (group.help or "").strip().splitlines()[0].rstrip(".")

    out = [
        f'.TH LEADERRUN 1 "{date.isoformat()}" "leaderrun {__version__}" "User Commands"',
        ".SH NAME",
        f"leaderrun \\- {escape(summary[0].lower() + summary[1:])}",
        ".SH SYNOPSIS",
        ".nf",
        "\\fBleaderrun\\fR [\\fIOPTIONS\\fR] \\-\\- \\fICOMMAND\\fR [\\fIARG\\fR]...",
    ]
    for command in commands:
        name = escape(command.name or "")
        pieces = escape(" ".join(command.collect_usage_pieces(contexts[command.name])))
        out.append(f"\\fBleaderrun\\fR \\fB{name}\\fR {pieces}")
    out += [".fi", ".SH DESCRIPTION"]
    out += render_text(group.help or "")
    if group.epilog:
        out += render_text(group.epilog)

    first = commands[0]
    out += [".SH OPTIONS", escape("Shared by every command (after or before its name)."), ".PP"]
    for param in options[first.name]:
        if param.name in shared:
            out += option_lines(param, contexts[first.name])
    out += [".SH COMMANDS"]
    for command in commands:
        out += [f'.SS "{escape(usage(command, contexts[command.name]))}"']
        out += render_text(command.help or "")
        own = [p for p in options[command.name] if p.name not in shared]
        if own:
            out += [".PP", "Options:"]
            for param in own:
                out += option_lines(param, contexts[command.name])
        if command.epilog:  # its exit codes are under EXIT STATUS
            rest = [b for b in re.split(r"\n\s*\n", command.epilog) if "Exit codes:" not in b]
            out += render_text("\n\n".join(rest))

    out += [".SH EXIT STATUS"]
    run = group.commands.get("run")
    rows = exit_codes(run.epilog or "") if run else []
    if rows:
        out += [".PP", "\\fBleaderrun run\\fR (and \\fBleaderrun \\-\\- COMMAND\\fR):"]
        for code, meaning in rows:
            out += [".TP", f"\\fB{escape(code)}\\fR", escape(meaning)]
    for command in commands:
        epilog = (command.epilog or "").strip()
        if command is not run and epilog.startswith("Exit codes:"):
            text = epilog.removeprefix("Exit codes:").strip()
            out += [".PP", f"\\fBleaderrun {escape(command.name or '')}\\fR: {escape(text)}"]

    out += [".SH ENVIRONMENT", ".PP", escape(
        "Every option above can be set through the variable shown with it; the command line "
        "wins, then the environment, then the --config file."
    )]  # fmt: skip
    for name, meaning in OTHER_ENVIRONMENT:
        out += [".TP", f"\\fB{escape(name)}\\fR", escape(meaning)]
    out += [".PP", "Set for COMMAND:"]
    for name, meaning in CHILD_ENVIRONMENT:
        out += [".TP", f"\\fB{escape(name)}\\fR", escape(meaning)]
    out += [
        ".SH FILES",
        ".TP",
        "\\fB/etc/leaderrun/\\fINAME\\fB.toml\\fR",
        escape(
            "A --config file (TOML, keys are the long options), one per job with the "
            "leaderrun@.service template unit; the job itself is /etc/leaderrun/NAME.job."
        ),
        ".SH SEE ALSO",
        escape(SEE_ALSO),
    ]
    return "\n".join(out) + "\n"


def _build_date() -> datetime.date:
    """SOURCE_DATE_EPOCH when set (reproducible builds), else today."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch and epoch.isdigit():
        return datetime.datetime.fromtimestamp(int(epoch), datetime.UTC).date()
    return datetime.datetime.now(datetime.UTC).date()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 or (args and args[0].startswith("-")):
        print("usage: python -m leaderrun.manpage [OUTPUT]  (default build/leaderrun.1)")
        return 2
    output = Path(args[0]) if args else DEFAULT_OUTPUT
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(generate(), encoding="utf-8")
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
