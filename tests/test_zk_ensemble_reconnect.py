"""The other side of tests/test_zk_ensemble.py: a leader whose member is cut off from the
ensemble leader, but which lists the other members too, must keep its child.

Its renewals' `sync` goes unanswered by the cut-off follower (a follower answers a sync only
once the ensemble leader did), so leaderrun drops that member after one request timeout and
reconnects to a member of the majority; that Connect is a touch on the ensemble leader
(`Learner.validateSession`, `Leader.revalidateSession`), so the session, the term and the child
go on, well before the follower would give up on the leader (syncLimit * tickTime, 5 s here).
"""

from __future__ import annotations

import time
from pathlib import Path

from helpers import ProcessRegistry, wait_for
from runs import URL, alive, child_pid, long_job, start, wait_exit, wait_reconnected
from servers import ZkMember, four_letter
from stores import store_for
from zk_partition import PartitionedZkEnsemble

TTL = 10.0
TIMING = ("--ttl", f"{TTL:g}s", "--renew-interval", "1s", "--kill-grace", "1s")


def holds(member: ZkMember, session: int) -> bool:
    """`member` holds a client connection of `session` (4lw `cons`)."""
    return f"sid=0x{session:x}" in (four_letter(member.endpoint, "cons") or "")


def test_leader_on_a_cut_off_follower_moves_to_the_majority_and_keeps_its_child(
    zk_partitioned: PartitionedZkEnsemble, processes: ProcessRegistry, election: str, tmp_path: Path
) -> None:
    follower = zk_partitioned.follower()
    others = [m for m in zk_partitioned.members if m is not follower]
    # Listed first: kazoo connects to the members in the order given.
    url = URL("zk://" + ",".join(m.endpoint for m in [follower, *others]))
    job, pid_file, done = long_job(tmp_path, ignore_term=False)
    proc = start(processes, url, election, *job, opts=TIMING)
    child = child_pid(pid_file)
    session = store_for(zk_partitioned).leader_handle(election)
    assert holds(follower, session), "leaderrun is not on the follower"

    cut = time.monotonic()
    zk_partitioned.isolate(follower)
    try:
        reconnected, moved_after = wait_reconnected(
            proc, cut, TTL, "leaderrun to reconnect to a member of the majority"
        )
        assert reconnected[2] in {m.endpoint for m in others}, reconnected[0]
        print(f"moved to the majority {moved_after:.2f}s after the cut")
        # Past T since the cut: only the touch through the majority keeps the session.
        wait_for(lambda: time.monotonic() > cut + TTL + 1.0 or not alive(child), TTL + 5)
        assert alive(child) and proc.poll() is None, proc.read_stderr()
        assert any(holds(m, session) for m in others), "no member of the majority holds it"
    finally:
        zk_partitioned.heal()
        zk_partitioned.wait_healthy()
    done.touch()
    assert wait_exit(proc) == 0, proc.read_stderr()
    err = proc.read_stderr()
    assert "WARNING" not in err and "at risk" not in err, err
