"""leaderrun's own output: quiet unless something is wrong (SPEC §5).

Default level is WARNING, so a cron line that ran or skipped its job prints nothing; `-v` adds
state changes, `-vv` debug detail, `-q` leaves errors only. On a terminal the text goes through
rich; to a file or journald it is one plain line per event, never wrapped or coloured; with
`--log-format json` it is one JSON object per line for log shippers.

Every state change is logged with `extra=event(name, **fields)`, so the text and JSON formats
carry the same facts: the message for people, the fields for machines.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.logging import RichHandler

LEVELS = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
FORMATS = ("text", "json")

#: Fields every JSON line carries (election, identity); set once at start-up.
CONTEXT: dict[str, Any] = {}


def event(name: str, **fields: Any) -> dict[str, Any]:
    """`extra=` for a log call: the event's name and its machine-readable fields."""
    return {"event": name, "fields": fields}


def level_for(verbosity: int) -> int:
    if verbosity >= 2:
        return logging.DEBUG
    return LEVELS[max(-1, verbosity)]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, event, message, context and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "log"),
            "message": record.getMessage(),
            "leaderrun_pid": GUARD_PID,
            **CONTEXT,
            **getattr(record, "fields", {}),
        }
        if record.name not in ("leaderrun", "root") and not record.name.startswith("leaderrun."):
            document["logger"] = record.name
        return json.dumps(document, default=str)


GUARD_PID = os.getpid()


def setup_logging(verbosity: int, log_format: str = "text", **context: Any) -> None:
    """Configure the root logger once, in the guard, before the worker is forked."""
    global GUARD_PID
    GUARD_PID = os.getpid()
    CONTEXT.clear()
    CONTEXT.update(context)
    handler: logging.Handler
    if log_format == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    elif sys.stderr.isatty():
        handler = RichHandler(
            console=Console(stderr=True),
            show_path=False,
            markup=False,
            log_time_format=f"[{TIME_FORMAT}]",
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s leaderrun[{GUARD_PID}] %(levelname)s %(message)s", TIME_FORMAT
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_for(verbosity))
    if verbosity < 2:
        # Client libraries are chatty at INFO; their news reaches the operator through ours.
        for noisy in ("pyetcd", "grpc", "kazoo"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
