"""Operating leaderrun: Prometheus metrics (SPEC §2 --metrics-addr), on every backend. What
`status` and `step-down` show and do is proven in test_contract.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import ProcessRegistry, descendants, wait_for
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
    last_renew = sample(leader_metrics, "leaderrun_last_renew_timestamp_seconds", election)
    assert last_renew is not None and abs(time.time() - last_renew) < 4
    token = store.candidates(election)[0].token
    assert sample(leader_metrics, "leaderrun_fencing_token", election) == token
    assert sample(leader_metrics, "leaderrun_lease_ttl_seconds", election) == 4
    # Initialised to 0 for the election, so rate() and alerts work from the first scrape.
    assert sample(waiter_metrics, "leaderrun_terms_total", election) == 0
    assert sample(waiter_metrics, "leaderrun_backend_errors_total", election) == 0
    assert "_created" not in leader_metrics
    assert 'leaderrun_build_info{version="' in leader_metrics
    done.touch()
    assert wait_exit(leader) == 0 and wait_exit(waiter) == 0


def test_child_exits_are_counted_by_the_childs_own_status(
    store: Store, election: str, processes: ProcessRegistry
) -> None:
    port = free_port()
    opts = ("--forever", "--restart-delay", "60s", "--metrics-addr", f"127.0.0.1:{port}")
    proc = start(processes, store, election, "sh", "-c", "exit 3", opts=opts)

    def exits() -> str:
        try:
            page = scrape(port)
        except OSError:  # not serving yet
            return ""
        return "\n".join(line for line in page.splitlines() if "child_exits" in line)

    found = wait_for(lambda: 'status="3"} 1.0' in exits() and exits(), 15, message="exit 3")
    assert 'status="75"' not in found
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc) == 0


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_health_and_leader_endpoints(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    """`/healthz` is 200 while the supervision loop answers and 503 once it is stuck (its
    worker stopped); `/leader` names the leader and its token, for leader and waiter alike;
    any other path is 404."""
    job, pid_file, done = long_job(tmp_path, ignore_term=False)
    ports = free_port(), free_port()
    leader = start(processes, store, election, *job, opts=("--id", "lead", "--metrics-addr",
                   f"127.0.0.1:{ports[0]}"), name="leader")  # fmt: skip
    child = child_pid(pid_file)
    waiter = start(processes, store, election, "true", opts=("--id", "wait", "--metrics-addr",
                   f"127.0.0.1:{ports[1]}"), name="waiter")  # fmt: skip
    wait_for(lambda: store.queued(election, 2), 15)
    token = store.candidates(election)[0].token

    assert get(ports[0], "/healthz")[0] == 200
    wait_for(lambda: get(ports[1], "/healthz")[0] == 200, 15, message="waiter healthy")
    for port, role in ((ports[0], "leader"), (ports[1], "waiting")):
        code, body = get(port, "/leader")
        view = json.loads(body)
        assert code == 200 and view["role"] == role, view
        assert view["leader"] == {"id": "lead", "token": token}
    assert get(ports[0], "/nope")[0] == 404

    worker = next(p for p in descendants(leader.pid) if p != child and p not in
                  descendants(child) and parent_of(p) == leader.pid)  # fmt: skip
    os.kill(worker, signal.SIGSTOP)
    try:
        # The HTTP server is a thread of the stopped worker: no answer at all is as telling
        # as a 503; a stuck loop in a running process answers 503.
        try:
            code = get(ports[0], "/healthz")[0]
        except OSError:
            code = 503
        assert code == 503
    finally:
        os.kill(worker, signal.SIGCONT)
    done.touch()
    assert wait_exit(leader) == 0 and wait_exit(waiter) == 0


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


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


PROMTOOL = Path(sys.executable).parent / "promtool"  # make deps extracts it into the venv


@pytest.mark.skipif(not PROMTOOL.exists(), reason="promtool missing: run `make deps`")
def test_metrics_page_passes_promtool_check(
    store: Store, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    job, pid_file, done = long_job(tmp_path, ignore_term=False)
    port = free_port()
    proc = start(processes, store, election, *job, opts=("--metrics-addr", f"127.0.0.1:{port}"))
    child_pid(pid_file)
    page = wait_for(lambda: "leaderrun_is_leader" in scrape_page(port) and scrape_page(port), 15)
    checked = subprocess.run(
        [str(PROMTOOL), "check", "metrics"], input=page, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    done.touch()
    assert wait_exit(proc) == 0


def scrape_page(port: int) -> str:
    try:
        return scrape(port)
    except OSError:
        return ""
