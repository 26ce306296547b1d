"""The nemesis checker must catch what it is meant to catch.

Unit tests feed it hand-made records; the real proof runs the same harness around
`etcdctl lock` (etcd 3.4), which keeps its command running when its session is lost: freeze
etcdctl longer than the lock's TTL and the next holder's job starts while the old one still
runs. The checker must report that.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from nemesis import checker
from nemesis.checker import Fault
from nemesis.harness import Nemesis, StoreAdapter
from servers import EtcdCluster


def _write(
    records: Path, cand: str, token: int, pid: int, kind: str, times: list[float], slot: int = 0
) -> None:
    lines = [f"S {times[0]:.6f} {token} {pid} 1 {kind} - {slot}"]
    lines += [f"H {t:.6f}" for t in times[1:]]
    (records / f"{cand}.{token}.{pid}.{kind}").write_text("\n".join(lines) + "\n")


def test_disjoint_terms_are_clean(tmp_path: Path) -> None:
    _write(tmp_path, "c0", 5, 100, "child", [0.0, 1.0, 2.0])
    _write(tmp_path, "c0", 5, 101, "grandchild", [0.5, 2.0])  # same term: fine
    _write(tmp_path, "c1", 9, 200, "child", [2.5, 4.0])
    res = checker.check(checker.load(tmp_path), [Fault("stop-member", "m0", 1.9, 2.1)], 0.0, 4.0)
    assert res.ok and res.terms == 2
    assert res.availability == pytest.approx(3.5 / 4.0)
    assert res.gaps["stop-member"]["max"] == pytest.approx(0.5)


def test_overlap_of_a_grandchild_is_a_violation(tmp_path: Path) -> None:
    _write(tmp_path, "c0", 5, 100, "child", [0.0, 2.0])
    _write(tmp_path, "c0", 5, 101, "grandchild", [0.5, 3.0])
    _write(tmp_path, "c1", 9, 200, "child", [2.5, 4.0])
    res = checker.check(checker.load(tmp_path), [Fault("kill-leaderrun", "c0", 2.0, 2.0)], 0, 5)
    [v] = res.violations
    assert v.kind == "overlap" and v.tokens == (5, 9) and v.overlap == pytest.approx(0.5)
    assert "kill-leaderrun c0" in v.fault


def test_tokens_must_grow_with_terms(tmp_path: Path) -> None:
    _write(tmp_path, "c0", 9, 100, "child", [0.0, 1.0])
    _write(tmp_path, "c1", 5, 200, "child", [1.5, 2.0])
    res = checker.check(checker.load(tmp_path), [], 0, 3)
    assert [v.kind for v in res.violations] == ["token-order"]


def test_semaphore_terms_of_distinct_slots_may_overlap(tmp_path: Path) -> None:
    _write(tmp_path, "c0", 5, 100, "child", [0.0, 3.0], slot=0)
    _write(tmp_path, "c1", 6, 200, "child", [0.5, 2.0], slot=1)
    _write(tmp_path, "c2", 8, 300, "child", [2.5, 4.0], slot=1)
    res = checker.check(checker.load(tmp_path), [], 0, 5, holders=2)
    assert res.ok and res.terms == 3
    assert [v.kind for v in checker.check(checker.load(tmp_path), [], 0, 5).violations] == [
        "overlap",
        "overlap",
    ], "the same records break the election's rule"


def test_semaphore_slot_overlap_and_over_capacity_are_violations(tmp_path: Path) -> None:
    _write(tmp_path, "c0", 5, 100, "child", [0.0, 3.0], slot=0)
    _write(tmp_path, "c1", 6, 200, "child", [0.5, 3.0], slot=1)
    _write(tmp_path, "c2", 8, 300, "child", [1.0, 2.0], slot=1)
    res = checker.check(checker.load(tmp_path), [], 0, 5, holders=2)
    assert sorted(v.kind for v in res.violations) == ["over-capacity", "overlap"]
    overlap = next(v for v in res.violations if v.kind == "overlap")
    assert overlap.tokens == (6, 8)


@pytest.mark.timeout(120)
def test_checker_catches_etcdctl_lock(tmp_path: Path) -> None:
    """etcdctl lock frozen longer than its TTL: its job runs on beside the next holder's."""
    cluster = EtcdCluster(tmp_path / "etcd", size=3)
    cluster.start()
    try:
        nem = Nemesis(
            StoreAdapter(cluster), tmp_path, "lock-1", 14, faults=("stop-leaderrun",),
            command="etcdctl-lock", hold=(8.0, 10.0), pause=(1.0, 2.0), aim_at_leader=1.0,
        )  # fmt: skip
        result = nem.run()
        print(nem.report(result, "etcdctl-lock"))
    finally:
        cluster.stop()
    overlaps = [v for v in result.violations if v.kind == "overlap"]
    assert overlaps, "the checker missed etcdctl lock's double holders"
    assert any("stop-leaderrun" in v.fault for v in overlaps)
