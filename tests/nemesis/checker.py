"""The independent checker: it reads only the jobs' own records (see job.py) and the nemesis's
fault log, never leaderrun's output.

A job is "alive" from its first record to its last one (heartbeats are discrete, ~20 ms apart,
so this under-estimates a life by at most one period: an overlap it reports is real). Any two
jobs (children or grandchildren) of *different* terms (fencing tokens) whose lives overlap by
more than 0 s are a violation. Under `--max-holders N` (`holders`), the rule is the semaphore's:
two terms of the same slot must not overlap, and no more than N terms may be alive at once.
Terms, ordered by the start of their first job (per slot), must carry
strictly increasing tokens. It also measures availability (share of the run during which some
job was alive) and, per fault type, the leaderless gap that followed each fault.
"""

from __future__ import annotations

import itertools
import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Life:
    """One job process as its record file tells it."""

    candidate: str
    token: int
    pid: int
    kind: str  # "child" or "grandchild"
    flags: str
    start: float
    last: float
    ended: str | None  # "done", "SIGTERM", or None (killed, or still running)
    path: str = ""
    slot: int = 0

    @property
    def label(self) -> str:
        return f"{self.candidate}/{self.kind}/pid {self.pid}/token {self.token}"


@dataclass
class Fault:
    """One injected fault: `kind` (e.g. "stop-worker"), its target, and when it was in force."""

    kind: str
    target: str
    start: float
    end: float
    detail: str = ""


@dataclass
class Violation:
    kind: str  # "overlap", "over-capacity" or "token-order"
    message: str
    overlap: float = 0.0
    candidates: tuple[str, ...] = ()
    tokens: tuple[int, ...] = ()
    at: float = 0.0
    fault: str = ""


@dataclass
class Result:
    seed: str
    backend: str
    command: str
    t0: float
    t1: float
    lives: list[Life]
    faults: list[Fault]
    violations: list[Violation] = field(default_factory=list)
    terms: int = 0
    availability: float = 0.0
    gaps: dict[str, dict[str, float]] = field(default_factory=dict)
    faults_by_type: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "command": self.command,
            "seed": self.seed,
            "seconds": round(self.t1 - self.t0, 1),
            "faults_by_type": self.faults_by_type,
            "faults": [
                {**asdict(f), "start": round(f.start - t0, 3), "end": round(f.end - t0, 3)}
                for f, t0 in ((f, self.t0) for f in self.faults)
            ],
            "terms": self.terms,
            "jobs": sum(1 for life in self.lives if life.kind == "child"),
            "grandchildren": sum(1 for life in self.lives if life.kind == "grandchild"),
            "violations": [{**asdict(v), "at": round(v.at - self.t0, 3)} for v in self.violations],
            "availability": round(self.availability, 4),
            "leaderless_gap_seconds": self.gaps,
        }


def parse(path: Path) -> Life | None:
    """A record file, or None when it is empty or its first line is torn."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    if not lines:
        return None
    head = lines[0].split()
    if len(head) < 7 or head[0] != "S":
        return None
    start = last = float(head[1])
    ended = None
    for line in lines[1:]:
        parts = line.split()
        if len(parts) < 2:
            continue  # torn last line of a killed process
        try:
            t = float(parts[1])
        except ValueError:
            continue
        last = max(last, t)
        if parts[0] == "E":
            ended = parts[2] if len(parts) > 2 else "?"
    candidate = path.name.split(".", 1)[0]
    slot = int(head[7]) if len(head) > 7 and head[7].isdigit() else 0
    return Life(candidate, int(head[2]), int(head[3]), head[5], head[6], start, last, ended,
                str(path), slot)  # fmt: skip


def load(records: Path) -> list[Life]:
    lives = [life for p in sorted(records.iterdir()) if (life := parse(p)) is not None]
    return sorted(lives, key=lambda life: life.start)


def fault_at(faults: Sequence[Fault], t: float) -> str:
    """The fault in force at `t` (or the last one that began before it), as text."""
    before = [f for f in faults if f.start <= t]
    if not before:
        return "none"
    f = max(before, key=lambda f: f.start)
    state = "in force" if t <= f.end else f"ended {t - f.end:.2f}s before"
    detail = f" {f.detail}" if f.detail else ""
    return f"{f.kind} {f.target}{detail} (began {t - f.start:.2f}s before, {state})"


def _union(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def check(
    lives: list[Life],
    faults: list[Fault],
    t0: float,
    t1: float,
    *,
    seed: str = "",
    backend: str = "",
    command: str = "leaderrun",
    gap_slack: float = 0.05,
    holders: int = 1,
) -> Result:
    res = Result(seed, backend, command, t0, t1, lives, faults)
    # Overlap of different terms (of one slot, under --max-holders): a sweep by start.
    active: list[Life] = []
    for life in sorted(lives, key=lambda x: x.start):
        active = [a for a in active if a.last > life.start]
        terms_alive = {a.token for a in active} | {life.token}
        if holders > 1 and len(terms_alive) > holders:
            res.violations.append(Violation(
                "over-capacity",
                f"{life.label} started at +{life.start - t0:.3f}s while {len(terms_alive) - 1} "
                f"other terms were alive (--max-holders {holders}): tokens "
                f"{sorted(terms_alive)}",
                candidates=(life.candidate,), tokens=tuple(sorted(terms_alive)),
                at=life.start, fault=fault_at(faults, life.start),
            ))  # fmt: skip
        for other in active:
            if other.token == life.token or (holders > 1 and other.slot != life.slot):
                continue
            overlap = min(other.last, life.last) - life.start
            if overlap > 0:
                res.violations.append(Violation(
                    "overlap",
                    f"{other.label} alive until +{other.last - t0:.3f}s while {life.label} "
                    f"started at +{life.start - t0:.3f}s: overlap {overlap:.3f}s",
                    overlap=overlap,
                    candidates=(other.candidate, life.candidate),
                    tokens=(other.token, life.token),
                    at=life.start,
                    fault=fault_at(faults, life.start),
                ))  # fmt: skip
        active.append(life)
    # Tokens in the order terms began (of each slot: holders of different slots start in any
    # order, but one slot's terms follow each other).
    first: dict[int, Life] = {}
    for life in lives:
        if life.token not in first or life.start < first[life.token].start:
            first[life.token] = life
    terms = sorted(first.values(), key=lambda x: x.start)
    res.terms = len(terms)
    successive = [
        pair
        for slot in sorted({t.slot for t in terms})
        for pair in itertools.pairwise([t for t in terms if t.slot == slot])
    ]
    for prev, nxt in successive:
        if nxt.token <= prev.token:
            res.violations.append(Violation(
                "token-order",
                f"term {nxt.label} began after term {prev.label} with a token not greater",
                candidates=(prev.candidate, nxt.candidate), tokens=(prev.token, nxt.token),
                at=nxt.start, fault=fault_at(faults, nxt.start),
            ))  # fmt: skip
    # Availability and gaps, counted from the first job's start.
    busy = _union((life.start, life.last) for life in lives)
    if busy:
        start = busy[0][0]
        span = max(t1 - start, 1e-9)
        res.availability = sum(min(b, t1) - a for a, b in busy if a < t1) / span
        holes = [(b, c) for (_, b), (c, _) in itertools.pairwise(busy)]
        holes += [(busy[-1][1], t1)] if busy[-1][1] < t1 else []
        holes = [(a, b) for a, b in holes if b - a > gap_slack]
    else:
        holes = []
    res.faults_by_type = {}
    per_type: dict[str, list[float]] = {}
    ordered = sorted(faults, key=lambda f: f.start)
    for i, f in enumerate(ordered):
        res.faults_by_type[f.kind] = res.faults_by_type.get(f.kind, 0) + 1
        window_end = ordered[i + 1].start if i + 1 < len(ordered) else t1
        longest = max((b - a for a, b in holes if f.start <= a < window_end), default=0.0)
        per_type.setdefault(f.kind, []).append(longest)
    res.gaps = {
        kind: {
            "median": round(statistics.median(values), 3),
            "max": round(max(values), 3),
            "with_gap": sum(1 for v in values if v > 0),
            "faults": len(values),
        }
        for kind, values in sorted(per_type.items())
    }
    return res


def text_report(res: Result) -> str:
    lines = [
        f"nemesis run: {res.command} on {res.backend}, seed {res.seed}, {res.t1 - res.t0:.0f} s",
        f"faults injected: {sum(res.faults_by_type.values())} "
        + ", ".join(f"{k}={v}" for k, v in sorted(res.faults_by_type.items())),
        f"terms: {res.terms}   jobs: {sum(1 for x in res.lives if x.kind == 'child')}   "
        f"grandchildren: {sum(1 for x in res.lives if x.kind == 'grandchild')}",
        f"availability: {res.availability:.1%}",
        f"violations: {len(res.violations)}",
    ]
    for v in res.violations[:50]:
        lines.append(f"  [{v.kind}] +{v.at - res.t0:.3f}s {v.message}; fault: {v.fault}")
    lines.append("leaderless gap after each fault, by type (s): median / max (faults with a gap)")
    for kind, g in res.gaps.items():
        lines.append(
            f"  {kind:<20} {g['median']:7.2f} / {g['max']:6.2f}  ({g['with_gap']}/{g['faults']})"
        )
    return "\n".join(lines) + "\n"


_COLORS = {
    "kill-leaderrun": "tab:red",
    "stop-worker": "tab:orange",
    "stop-guard": "gold",
    "stop-leaderrun": "tab:brown",
    "stop-member": "tab:blue",
    "restart-member": "tab:cyan",
    "kill-store-leader": "tab:purple",
    "partition-silent": "tab:green",
    "partition-reset": "tab:olive",
}


def plot(res: Result, path: Path, candidates: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    lanes = {c: i for i, c in enumerate(candidates)}
    width = min(max(12.0, (res.t1 - res.t0) / 10), 28.0)
    fig, ax = plt.subplots(figsize=(width, 1.2 + 0.9 * len(lanes)))
    seen: set[str] = set()
    for f in res.faults:
        color = _COLORS.get(f.kind, "grey")
        ax.axvspan(f.start - res.t0, max(f.end, f.start + 0.1) - res.t0, color=color, alpha=0.18,
                   label=None)  # fmt: skip
        seen.add(f.kind)
        if f.target in lanes:
            y = lanes[f.target]
            ax.plot([f.start - res.t0], [y + 0.42], marker="v", color=color, markersize=5)
    bad = {t for v in res.violations for t in v.tokens}
    for life in res.lives:
        y = lanes.setdefault(life.candidate, len(lanes))
        child = life.kind == "child"
        h, off = (0.5, -0.25) if child else (0.18, 0.28)
        color = "tab:red" if life.token in bad else ("tab:green" if child else "tab:gray")
        ax.broken_barh([(life.start - res.t0, max(life.last - life.start, 0.02))], (y + off, h),
                       facecolors=color, edgecolor="black", linewidth=0.3)  # fmt: skip
        if child:
            ax.text(life.start - res.t0, y - 0.38, str(life.token), fontsize=6, va="top")
    ax.set_yticks(range(len(lanes)), list(lanes))
    ax.set_ylim(-0.8, len(lanes) - 0.3)
    ax.set_xlim(0, res.t1 - res.t0)
    ax.set_xlabel("seconds since start")
    ax.set_title(
        f"{res.command} on {res.backend}, seed {res.seed}: {res.terms} terms, "
        f"{len(res.violations)} violations, availability {res.availability:.1%}"
    )
    handles = [Patch(color=_COLORS.get(k, "grey"), alpha=0.4, label=k) for k in sorted(seen)]
    handles += [Patch(color="tab:green", label="job (token)"),
                Patch(color="tab:gray", label="grandchild"),
                Patch(color="tab:red", label="term in a violation")]  # fmt: skip
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(res: Result, out: Path, name: str, candidates: Sequence[str]) -> str:
    """`<name>.json`, `<name>.txt` and `<name>.png` under `out`; returns the text report."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(res.summary(), indent=2) + "\n")
    text = text_report(res)
    (out / f"{name}.txt").write_text(text)
    plot(res, out / f"{name}.png", candidates)
    return text
