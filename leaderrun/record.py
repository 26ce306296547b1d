"""The value a candidate stores under its election key.

A small versioned JSON document, so that `status`, logs and other candidates can say who leads
("waiting behind node-a") and so that standard tools (`etcdctl elect --listen`) show something
readable. It names the command but never its arguments: those may hold secrets.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from leaderrun import __version__

SCHEMA_VERSION = 1


def candidate_value(
    identity: str,
    command: str,
    leaderrun_pid: int | None = None,
    queued: float | None = None,
    **leading: Any,
) -> bytes:
    """Our value in the queue; once leading, `leader_since` and `child_pid` are added."""
    document = {
        "v": SCHEMA_VERSION,
        "id": identity,
        "host": socket.gethostname(),
        "pid": leaderrun_pid if leaderrun_pid is not None else os.getpid(),
        "queued": queued if queued is not None else time.time(),
        "leaderrun": __version__,
        "command": os.path.basename(command),
        **leading,
    }
    return json.dumps(document, separators=(",", ":")).encode()


def with_fields(value: bytes, **fields: Any) -> bytes:
    """`value` with `fields` set (a holder's `slot`); a value not of ours is left as it is."""
    document = parse_value(value)
    if document is None:
        return value
    document.update(fields)
    return json.dumps(document, separators=(",", ":")).encode()


def int_field(value: bytes, name: str) -> int | None:
    """An integer field of one of our values (`slot`, `holders`), or None."""
    document = parse_value(value)
    found = document.get(name) if document else None
    return found if isinstance(found, int) and not isinstance(found, bool) else None


def parse_value(value: bytes) -> dict[str, Any] | None:
    """The document, or None when the value is not one of ours (foreign, old, damaged)."""
    try:
        document = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(document, dict) or not isinstance(document.get("id"), str):
        return None
    return document


def identity_of(value: bytes) -> str:
    """A printable name for a candidate, whatever its value holds."""
    document = parse_value(value)
    if document is not None:
        return str(document["id"])
    preview = value[:40].decode("utf-8", "backslashreplace")
    return f"<foreign value {preview!r}{'...' if len(value) > 40 else ''}>"


def step_down_request(token: int, identity: str) -> bytes:
    """What `step-down` writes: which term it asks to hand over, and who asks."""
    document = {
        "v": SCHEMA_VERSION,
        "token": token,
        "id": identity,
        "host": socket.gethostname(),
        "asked": time.time(),
    }
    return json.dumps(document, separators=(",", ":")).encode()


def requested_token(request: bytes | None) -> int | None:
    """The term a step-down request names, or None for anything else."""
    document = parse_value(request) if request else None
    token = document.get("token") if document else None
    return token if isinstance(token, int) else None


def describe_requester(request: bytes) -> str:
    """"id@host" of whoever wrote a step-down request, for the leader's log line."""
    document = parse_value(request) or {}
    who, host = document.get("id", "someone"), document.get("host")
    return f"{who}@{host}" if host and host not in str(who) else str(who)


#: The outcome record's own format version (`outcome_record`).
OUTCOME_VERSION = 1
#: How a run ended (`outcome_record`'s `ended`): by itself, or stopped by leaderrun because
#: leadership was lost (or at risk), `step-down` asked, leaderrun was asked to stop (a signal
#: it forwarded), or leaderrun's main process died (the child was killed).
OUTCOME_ENDINGS = ("exited", "lost", "stepped-down", "stopped", "killed")


def outcome_record(
    token: int,
    identity: str,
    start: float,
    duration: float,
    status: int,
    ended: str,
    holders: int = 1,
    slot: int = 0,
) -> bytes:
    """What every run ended with, for `status`: the term (`token`), who ran it, when it
    started (wall clock), how long the child ran (seconds), the child's own status (128+N
    for signal N) and how it ended (`OUTCOME_ENDINGS`). Unlike the `--once-per` record, it
    is written after the release, for failed runs too. Under `--max-holders` it also says N
    and the slot: once every holder has gone, it is the only place `status` can learn N from.
    """
    document: dict[str, object] = {
        "v": OUTCOME_VERSION,
        "token": token,
        "id": identity,
        "host": socket.gethostname(),
        "start": start,
        "duration": round(duration, 3),
        "status": status,
        "ended": ended,
    }
    if holders > 1:
        document.update(holders=holders, slot=slot)
    return json.dumps(document, separators=(",", ":")).encode()


def outcome_token(record: bytes | None) -> int | None:
    """The term an outcome record is of, or None for anything else (foreign, damaged)."""
    return int_field(record, "token") if record else None
