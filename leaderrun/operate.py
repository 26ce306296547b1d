"""The operator's commands: `status` (who leads, since when, who is next) and `step-down`.

`status --json` has a versioned schema (documented in the README, `schema: 1`). Values that
leaderrun did not write, or wrote in another format, are shown as foreign, never a crash: a
leader whose value is foreign is still a leader.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from leaderrun.backends import Backend, Candidate, ElectionView, backend_class
from leaderrun.errors import ExitCode
from leaderrun.record import int_field, parse_value, step_down_request
from leaderrun.settings import Settings

SCHEMA_VERSION = 1
#: Added fields within schema 1: 1 = `step_down` on each election; 2 = `max_holders` and
#: `holders` (each with `slot` and `step_down`) on each election; 3 = `last_outcome` on each
#: election; 4 = `slot` on `last_outcome`, and `max_holders` from the last outcome when nobody
#: is queued.
SCHEMA_MINOR = 4
RAW_PREVIEW = 200


def connect(settings: Settings) -> Backend:
    backend = backend_class(settings.backend.scheme)(settings)
    backend.connect()
    return backend


# -- the JSON document (also what the text output is built from) ---------------------------------


def iso(timestamp: Any) -> str | None:
    if not isinstance(timestamp, int | float):
        return None
    return datetime.fromtimestamp(float(timestamp)).astimezone().isoformat(timespec="seconds")


def raw_preview(value: bytes) -> str:
    return value[:RAW_PREVIEW].decode("utf-8", "backslashreplace") + (
        "..." if len(value) > RAW_PREVIEW else ""
    )


def describe_candidate(candidate: Candidate) -> dict[str, Any]:
    document = parse_value(candidate.value)
    described: dict[str, Any] = {"token": candidate.token, "key": candidate.key}
    if document is None:
        described.update(id=None, foreign=True, raw=raw_preview(candidate.value))
    else:
        described.update(
            id=document["id"],
            foreign=False,
            host=document.get("host"),
            pid=document.get("pid"),
            child_pid=document.get("child_pid"),
            command=document.get("command"),
            queued=iso(document.get("queued")),
            leader_since=iso(document.get("leader_since")),
        )
    if candidate.ttl_left is not None:
        described["lease_ttl_left"] = candidate.ttl_left
    if candidate.slot is not None:
        described["slot"] = candidate.slot
    return described


def describe_run(
    raw: bytes | None, details: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any] | None:
    """A run record (`--once-per`'s or an outcome): who ran it and when, then `details`;
    `{"foreign": true, ...}` for a record leaderrun did not write, None for none."""
    if raw is None:
        return None
    document = parse_value(raw)
    if document is None:
        return {"foreign": True, "raw": raw_preview(raw)}
    return {
        "foreign": False,
        "id": document["id"],
        "host": document.get("host"),
        "token": document.get("token"),
        "start": iso(document.get("start")),
        **details(document),
    }


def describe_last_run(raw: bytes | None) -> dict[str, Any] | None:
    """The last successful `--once-per` run, or None."""
    return describe_run(raw, lambda document: {"end": iso(document.get("end"))})


def describe_outcome(raw: bytes | None) -> dict[str, Any] | None:
    """The last run's outcome, of any term (schema 1.3), or None when none was recorded."""
    return describe_run(raw, outcome_details)


def outcome_details(document: dict[str, Any]) -> dict[str, Any]:
    duration, status, slot = (document.get(k) for k in ("duration", "status", "slot"))
    return {
        "duration": duration if isinstance(duration, int | float) else None,
        "status": status if isinstance(status, int) else None,
        "ended": document.get("ended"),
        "slot": slot if isinstance(slot, int) and not isinstance(slot, bool) else None,
    }


def describe_step_down(
    view: ElectionView, holder: Candidate | None = None
) -> dict[str, Any] | None:
    """The pending step-down request for the current leader's term (schema 1.1), or for
    `holder`'s under `--max-holders` (1.2), else None: a request for an ended term is no
    longer pending."""
    leader = view.leader if holder is None else holder
    raw = view.step_down if holder is None else view.step_downs.get(holder.slot or 0)
    if raw is None or leader is None:
        return None
    document = parse_value(raw)
    if document is None or document.get("token") != leader.token:
        return None
    asked = document.get("asked")
    return {
        "token": leader.token,
        "by": document["id"],
        "host": document.get("host"),
        "asked": iso(asked),
        "asked_seconds_ago": round(time.time() - asked, 1)
        if isinstance(asked, int | float)
        else None,
    }


def describe_election(view: ElectionView) -> dict[str, Any]:
    """`leader` is the first holder and `waiting` those behind every holder, so readers of
    schema 1.0 keep working under `--max-holders`; `holders` lists them all (1.2)."""
    candidates = [describe_candidate(c) for c in view.candidates]
    holders = candidates[: view.max_holders]
    if view.max_holders > 1:
        for described, holder in zip(holders, view.holders, strict=True):
            described["step_down"] = describe_step_down(view, holder)
    return {
        "name": view.name,
        "leader": holders[0] if holders else None,
        "step_down": describe_step_down(view) if view.max_holders == 1 else None,
        "max_holders": max_holders(view),
        "holders": holders,
        "waiting": candidates[view.max_holders :],
        "last_run": describe_last_run(view.last_run),
        "last_outcome": describe_outcome(view.outcome),
    }


def max_holders(view: ElectionView) -> int:
    """N as the candidates say it; with nobody queued, as the last run said it (1.4), so an
    idle `--max-holders` election still shows its slots."""
    if view.candidates or view.outcome is None:
        return view.max_holders
    return int_field(view.outcome, "holders") or view.max_holders


def step_down_line(request: dict[str, Any]) -> str:
    asked = request.get("asked_seconds_ago")
    by = request["by"] + (f" on {request['host']}" if request.get("host") else "")
    return (
        f"stepping down, asked {span(max(0.0, asked))} ago by {by}"
        if isinstance(asked, int | float)
        else f"stepping down, asked by {by}"
    )


# -- status ----------------------------------------------------------------------------------------


def show_status(settings: Settings, election: str | None, as_json: bool) -> int:
    """Exit 0 when every election shown has a leader, 3 otherwise (69/77 raised earlier)."""
    backend = connect(settings)
    try:
        names = [election] if election else backend.elections()
        elections = [describe_election(backend.view(name)) for name in names]
    finally:
        backend.close()
    document = {
        "schema": SCHEMA_VERSION,
        "schema_minor": SCHEMA_MINOR,
        "backend": str(settings.backend),
        "prefix": settings.prefix,
        "elections": elections,
    }
    if as_json:
        print(json.dumps(document, indent=2))
    elif sys.stdout.isatty():
        print_table(document)
    else:
        print_plain(document)
    has_all = bool(elections) and all(e["leader"] is not None for e in elections)
    return ExitCode.OK if has_all else ExitCode.NO_LEADER


#: The plain output fits a terminal of this width (identities are shortened, never times).
WIDTH = 80


def ago(when: str | None, now: float | None = None) -> str | None:
    """An ISO time from the document as "12 s ago", "3 min ago", "5 h ago", "2 days ago"."""
    if not when:
        return None
    try:
        seconds = (time.time() if now is None else now) - datetime.fromisoformat(when).timestamp()
    except ValueError:
        return when
    if seconds > -5:  # a little clock skew between hosts
        return "just now" if seconds < 1 else f"{span(round(seconds))} ago"
    return f"in {span(round(-seconds))} (clock skew?)"


def span(seconds: float) -> str:
    """A length of time for people: "2.1 s", "12 s", "3 min", "5 h", "2 days"."""
    if seconds < 10:
        return f"{seconds:.1f} s".replace(".0 s", " s")
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


def who(candidate: dict[str, Any]) -> str:
    if candidate["foreign"]:
        return f"<foreign value {candidate['raw'][:40]!r}>"
    where = [f"host {candidate['host']}"] if candidate.get("host") else []
    if candidate.get("pid"):
        where.append(f"pid {candidate['pid']}")
    if candidate.get("child_pid"):
        where.append(f"child pid {candidate['child_pid']}")
    return f"{candidate['id']} ({', '.join(where)})" if where else str(candidate["id"])


def candidate_line(prefix: str, candidate: dict[str, Any], leads: bool, width: int = WIDTH) -> str:
    """One candidate on one line within `width`: `id (host H, pid P, child pid C), token T,
    since/queued ...`.

    Host and pid are left out when the identity already says them (the default identity is
    hostname:pid). What does not fit goes, least useful first (leaderrun's pid, lease, times,
    child pid); then the identity is shortened with "…". Host and token always stay."""
    if candidate["foreign"]:
        token = [(1, f"token {candidate['token']}")]
        return fit(prefix, who(candidate), [], token, width, keep=len("<foreign value '") + 4)
    ident, host, pid = str(candidate["id"]), candidate.get("host"), candidate.get("pid")
    details: list[tuple[int, str]] = []
    if host and not ident.startswith(f"{host}:"):
        details.append((1, f"host {shorten(str(host), 24)}"))
    if pid and ident != f"{host}:{pid}":
        details.append((6, f"pid {pid}"))
    if candidate.get("child_pid"):
        details.append((2, f"child pid {candidate['child_pid']}"))
    fields = [(1, f"token {candidate['token']}")]
    if leads:
        since = ago(candidate.get("leader_since"))
        left = candidate.get("lease_ttl_left")
        if since:
            fields.append((3, f"since {since}"))
        if isinstance(left, int | float):
            fields.append((4, f"lease {left:g} s left"))
    else:
        queued = ago(candidate.get("queued"))
        if queued:
            fields.append((3, f"queued {queued}"))
    return fit(prefix, ident, details, fields, width)


def fit(
    prefix: str,
    name: str,
    details: list[tuple[int, str]],
    fields: list[tuple[int, str]],
    width: int = WIDTH,
    keep: int = 8,
) -> str:
    """`prefix name (detail, ...), field, ...` within `width`: details and fields are left
    out, the highest number (least useful) first, never those numbered 1, until `name` has 20
    columns (or all it needs); then `name` is shortened to the room left (`keep` at least)."""
    details, fields = list(details), list(fields)
    while True:
        inner = ", ".join(text for _, text in details)
        tail = (f" ({inner})" if inner else "") + "".join(f", {text}" for _, text in fields)
        room = width - len(prefix) - len(tail)
        droppable = [item for item in (*details, *fields) if item[0] > 1]
        if room >= min(len(name), 20) or not droppable:
            return prefix + shorten(name, max(room, keep)) + tail
        least = max(droppable, key=lambda item: item[0])
        (details if least in details else fields).remove(least)


def leader_line(leader: dict[str, Any] | None, width: int = WIDTH) -> str:
    return "no leader" if leader is None else candidate_line("", leader, True, width)


def last_run_line(last_run: dict[str, Any] | None) -> str:
    if last_run is None:
        return "-"
    if last_run["foreign"]:
        return f"<foreign record {last_run['raw'][:40]!r}>"
    parts = [str(last_run["id"])]
    started = ago(last_run.get("start"))
    if started:
        parts.append(f"started {started}")
    try:
        took = (
            datetime.fromisoformat(last_run["end"]) - datetime.fromisoformat(last_run["start"])
        ).total_seconds()
        parts.append(f"took {span(took)}" if took >= 1 else "took under 1 s")
    except (TypeError, ValueError):
        pass
    return ", ".join(parts)


#: How a run ended, when leaderrun stopped it (`record.OUTCOME_ENDINGS`), for people.
ENDINGS = {
    "lost": "leadership lost",
    "stepped-down": "stepped down",
    "stopped": "leaderrun was stopped",
    "killed": "leaderrun died",
}


def outcome_result(outcome: dict[str, Any]) -> str:
    """What a run ended with, e.g. `exit 3 after 2.1 s` or `killed by SIGTERM after 40 s,
    leadership lost`."""
    status, took = outcome.get("status"), outcome.get("duration")
    what = "status unknown" if status is None else f"exit {status}"
    if isinstance(status, int) and status > 128:
        with suppress(ValueError):  # no such signal: say the number
            what = f"killed by {signal.Signals(status - 128).name}"
    if isinstance(took, int | float):
        what += f" after {span(max(0.0, took))}"
    why = ENDINGS.get(str(outcome.get("ended")))
    return f"{what}, {why}" if why else what


def outcome_line(outcome: dict[str, Any], prefix: str = "  ", width: int = WIDTH) -> str:
    """`  last run 12 min ago by node-a: exit 3 after 2.1 s` within `width` (the identity is
    shortened first)."""
    if outcome["foreign"]:
        return shorten(f"{prefix}last run: <foreign record {outcome['raw'][:40]!r}>", width)
    when = ago(outcome.get("start"))
    head = f"{prefix}last run {when} by " if when else f"{prefix}last run by "
    tail = f": {outcome_result(outcome)}"
    return head + shorten(str(outcome["id"]), max(8, width - len(head) - len(tail))) + tail


def print_plain(document: dict[str, Any]) -> None:
    """One line per candidate (the leader's starts with the election's name), per pending
    step-down and per last run; each within WIDTH columns unless the election's name is
    longer than that."""
    if not document["elections"]:
        print(f"no elections under {document['prefix']}")
    for election in document["elections"]:
        leader = election["leader"]
        prefix = f"{election['name']}: "
        if election.get("max_holders", 1) > 1:
            print_holders(election)
        else:
            print(prefix + "no leader" if leader is None else candidate_line(prefix, leader, True))
        if election["step_down"] is not None:
            print(shorten(f"  {step_down_line(election['step_down'])}", WIDTH))
        for n, waiter in enumerate(election["waiting"], start=1):
            print(candidate_line(f"  waiting {n}: ", waiter, False))
        if election["last_run"] is not None:
            last = f"  last successful run: {last_run_line(election['last_run'])}"
            print(shorten(last, WIDTH))
        if leader is None and election.get("last_outcome") is not None:
            print(outcome_line(election["last_outcome"]))


def print_holders(election: dict[str, Any]) -> None:
    """`--max-holders`: a head line, then one line per holder by slot (and its step-down)."""
    holders = election["holders"]
    print(f"{election['name']}: {len(holders)} of {election['max_holders']} slots held")
    for holder in sorted(holders, key=lambda h: h.get("slot", election["max_holders"])):
        slot = holder.get("slot")
        print(candidate_line(f"  slot {'?' if slot is None else slot}: ", holder, True))
        if holder.get("step_down") is not None:
            print(shorten(f"    {step_down_line(holder['step_down'])}", WIDTH))


def print_table(document: dict[str, Any]) -> None:
    table = Table(title=f"elections under {document['prefix']} ({document['backend']})")
    for column in ("election", "leader", "waiting (in order)", "last successful run"):
        table.add_column(column)
    for election in document["elections"]:
        waiting = "\n".join(
            candidate_line(f"{n}. ", w, False, 40) for n, w in enumerate(election["waiting"], 1)
        )
        leader = (
            leader_line(election["leader"], 40)
            if election.get("max_holders", 1) == 1
            else "\n".join(
                candidate_line(f"slot {h.get('slot', '?')}: ", h, True, 40)
                for h in election["holders"]
            )
            or "no holder"
        )
        if election["step_down"] is not None:
            leader += f"\n{step_down_line(election['step_down'])}"
        if election["leader"] is None and election.get("last_outcome") is not None:
            leader += "\n" + outcome_line(election["last_outcome"], "", 60)
        table.add_row(
            election["name"],
            leader,
            waiting or "-",
            last_run_line(election["last_run"]),
        )
    Console().print(table)


# -- step-down -------------------------------------------------------------------------------------


def step_down(
    settings: Settings,
    election: str,
    timeout: float,
    wait: bool,
    force: bool,
    slot: int | None = None,
) -> int:
    """Ask the leader of `election` to hand over (SPEC §7); with `force`, remove it at once.
    Under `--max-holders`, the holder of `slot`, or every holder one after another.

    Exit 0 once the leader released (or was removed), 3 when there was no leader, 75 when it
    did not act within `timeout` (the request is then withdrawn).
    """
    backend = connect(settings)
    try:
        view = backend.view(election)
        holders = [h for h in view.holders if slot is None or (h.slot or 0) == slot]
        if not holders:
            what = "no leader" if slot is None else f"no holder in slot {slot}"
            print(f"leaderrun: {election} has {what}; nothing to step down", file=sys.stderr)
            return ExitCode.NO_LEADER
        for holder in holders:
            code = _step_down_holder(backend, settings, view, holder, timeout, wait, force)
            if code != ExitCode.OK:
                return code
        return ExitCode.OK
    finally:
        backend.close()


def _step_down_holder(
    backend: Backend,
    settings: Settings,
    view: ElectionView,
    holder: Candidate,
    timeout: float,
    wait: bool,
    force: bool,
) -> int:
    election = view.name
    slot = holder.slot if view.max_holders > 1 else None
    name = who(describe_candidate(holder)) + ("" if slot is None else f" in slot {slot}")
    if force:
        return _force(backend, election, name, slot)
    request = step_down_request(holder.token, settings.identity)
    if not backend.request_step_down(election, holder, request):
        print(f"{name} stopped holding {election} meanwhile; nothing to do")
        return ExitCode.OK
    asked = time.monotonic()
    print(f"asked {name} to step down from {election}; waiting for its job to stop")
    if not _await(
        backend,
        election,
        lambda: holder.token not in _holder_tokens(backend, election),
        asked + timeout,
    ):
        backend.withdraw_step_down(election, request, slot)
        print(
            f"leaderrun: {name} did not hand over {election} within {timeout:g}s "
            "(hung or partitioned?); request withdrawn. --force removes it at once",
            file=sys.stderr,
        )
        return ExitCode.LOST
    backend.withdraw_step_down(election, request, slot)
    print(f"{name} handed over {election} after {time.monotonic() - asked:.2f}s")
    if wait:
        _wait_for_successor(backend, election, holder.token, slot, asked + timeout)
    return ExitCode.OK


def _force(backend: Backend, election: str, name: str, slot: int | None) -> int:
    leader = backend.force_step_down(election, slot)
    if leader is None:
        print(f"leaderrun: {election} has no leader; nothing to step down", file=sys.stderr)
        return ExitCode.NO_LEADER
    print(
        f"leaderrun: warning: removed {name} from {election} at once (--force): the next job may "
        "start while the old one is still stopping; the fencing token is what protects the "
        "shared resource now",
        file=sys.stderr,
    )
    return ExitCode.OK


def _holder_tokens(backend: Backend, election: str) -> set[int]:
    return {holder.token for holder in backend.view(election).holders}


def _successor(view: ElectionView, slot: int | None) -> Candidate | None:
    """Who holds the leader's place (`slot`'s under `--max-holders`) now, if anyone."""
    if slot is None:
        return view.leader
    return next((h for h in view.holders if h.slot == slot), None)


def _wait_for_successor(
    backend: Backend, election: str, old_token: int, slot: int | None, until: float
) -> None:
    """`--wait`: until the next leader's child runs (it announces its pid), or nobody waits."""

    def successor_running() -> bool:
        view = backend.view(election)
        successor = _successor(view, slot)
        if successor is None:
            return not view.waiters
        document = parse_value(successor.value)
        return successor.token != old_token and bool(document and document.get("child_pid"))

    if not _await(backend, election, successor_running, until):
        print(f"leaderrun: no new job started in {election} in time", file=sys.stderr)
        return
    successor = _successor(backend.view(election), slot)
    if successor is None:
        print(f"nobody was waiting in {election}")
    else:
        print(f"{who(describe_candidate(successor))} now leads {election}")


def _await(backend: Backend, election: str, done: Callable[[], bool], until: float) -> bool:
    """An operator's wait on the store's state: `done` is looked at again whenever the
    election's queue changes (a store watch, `Backend.changes`), bounded by `until`."""
    with backend.changes(election) as changed:
        while not done():
            if not changed(until):
                return done()
    return True
