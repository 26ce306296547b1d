"""Operating leaderrun: Prometheus metrics (SPEC §2 --metrics-addr), on every backend. What
`status` and `step-down` show and do is proven in test_contract.py."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

from helpers import ProcessRegistry, wait_for
from runs import child_pid, long_job, start, wait_exit
from servers import free_port
from stores import Store

# -- metrics ---------------------------------------------------------------------------------------


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def sample(text: str, name: str, election: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f'{name}{{election="{election}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_show_leader_waiter_and_renewals(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    job, pid_file, done = long_job(tmp_path, ignore_term=False)
    ports = free_port(), free_port()
    opts = ("--ttl", "4s", "--kill-grace", "1s", "--renew-interval", "200ms")
    leader = start(processes, store, election, *job,
                   opts=(*opts, "--metrics-addr", f"127.0.0.1:{ports[0]}"))  # fmt: skip
    child_pid(pid_file)
    waiter = start(processes, store, election, "true",
                   opts=(*opts, "--metrics-addr", f"127.0.0.1:{ports[1]}"))  # fmt: skip
    wait_for(lambda: store.queued(election, 2), 15)

    def renewals() -> float:
        return sample(scrape(ports[0]), "leaderrun_renew_latency_seconds_count", election) or 0

    wait_for(lambda: renewals() >= 2, 15, message="renewals counted")
    leader_metrics, waiter_metrics = scrape(ports[0]), scrape(ports[1])
    assert sample(leader_metrics, "leaderrun_is_leader", election) == 1
    assert sample(waiter_metrics, "leaderrun_is_leader", election) == 0
    assert sample(leader_metrics, "leaderrun_terms_total", election) == 1
    assert sample(leader_metrics, "leaderrun_child_starts_total", election) == 1
    since = sample(leader_metrics, "leaderrun_seconds_since_last_renew", election)
    assert since is not None and 0 <= since < 4
    done.touch()
    assert wait_exit(leader) == 0 and wait_exit(waiter) == 0


def test_metrics_addr_in_use_is_a_usage_error(
    store: Store, election: str, processes: ProcessRegistry
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = start(processes, store, election, "true",
                     opts=("--metrics-addr", f"127.0.0.1:{port}"), verbose=0)  # fmt: skip
        assert wait_exit(proc) == 2
    err = proc.read_stderr()
    assert "--metrics-addr" in err and len(err.strip().splitlines()) == 1
    assert store.candidates(election) == []
