"""Operating leaderrun: `status`, `step-down`, Prometheus metrics (SPEC §6, §7)."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

from helpers import LEADERRUN_CMD, ProcessRegistry, clean_env, wait_for
from runs import alive, election_view, queued, sh, start, status, wait_exit
from servers import EtcdCluster, free_port


def hold(tmp_path: Path, name: str) -> tuple[tuple[str, ...], Path, Path]:
    """A job that records its pid and runs until the test touches its release file."""
    release, pid_file = tmp_path / f"release-{name}", tmp_path / f"pid-{name}"
    job = sh(f"echo $$ > {pid_file}; while [ ! -e {release} ]; do sleep 0.05; done")
    return job, release, pid_file


def operator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LEADERRUN_CMD, *args], capture_output=True, text=True, timeout=60, env=clean_env()
    )


def test_status_json_shows_leader_and_waiters_in_order(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    job, release, pid_file = hold(tmp_path, "a")
    procs = []
    for n, ident in enumerate(["node-a", "node-b", "node-c"], start=1):
        procs.append(start(processes, etcd, election, *job, opts=("--id", ident)))
        wait_for(lambda n=n: queued(etcd, election, n), 15)
    wait_for(pid_file.exists, 15)

    code, document = status(etcd, election)
    assert code == 0
    assert document["schema"] == 1
    (view,) = document["elections"]
    leader, waiting = view["leader"], view["waiting"]
    assert leader["id"] == "node-a" and leader["pid"] == procs[0].pid
    assert leader["child_pid"] == int(pid_file.read_text())
    assert leader["leader_since"] is not None and leader["foreign"] is False
    assert [w["id"] for w in waiting] == ["node-b", "node-c"]
    assert [w["pid"] for w in waiting] == [procs[1].pid, procs[2].pid]
    assert leader["token"] < waiting[0]["token"] < waiting[1]["token"]

    plain = operator("status", "--backend", etcd.backend_url, election)
    assert plain.returncode == 0
    assert plain.stdout.startswith(f"{election}: node-a (host ")
    assert "waiting 1: node-b" in plain.stdout and "waiting 2: node-c" in plain.stdout

    everything = operator("status", "--backend", etcd.backend_url, "--json")
    assert election in everything.stdout

    release.touch()
    assert [wait_exit(p) for p in procs] == [0, 0, 0]


def test_status_without_leader_exits_3(etcd: EtcdCluster, election: str) -> None:
    code, document = status(etcd, election)
    assert code == 3
    assert document["elections"][0]["leader"] is None


def test_status_unreachable_exits_69() -> None:
    done = operator(
        "status", "--backend", f"etcd://127.0.0.1:{free_port()}", "--connect-timeout", "1s"
    )
    assert done.returncode == 69
    assert len(done.stderr.strip().splitlines()) == 1 and "cannot reach" in done.stderr


def test_status_shows_foreign_values_and_still_counts_a_leader(
    etcd: EtcdCluster, election: str
) -> None:
    etcd.etcdctl("put", f"/leaderrun/{election}/abc", "\x01\x02 not json {")
    etcd.etcdctl("put", f"/leaderrun/{election}", '{"truncated": ')
    code, document = status(etcd, election)
    assert code == 0
    view = document["elections"][0]
    assert view["leader"]["foreign"] is True and view["leader"]["id"] is None
    assert "not json" in view["leader"]["raw"]
    assert view["last_run"]["foreign"] is True
    plain = operator("status", "--backend", etcd.backend_url, election)
    assert plain.returncode == 0 and "<foreign value" in plain.stdout
    etcd.etcdctl("del", "--prefix", f"/leaderrun/{election}")


def test_step_down_moves_leadership_and_stops_the_old_child(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    job_a, _, pid_a = hold(tmp_path, "a")
    job_b, release_b, pid_b = hold(tmp_path, "b")
    a = start(processes, etcd, election, *job_a, opts=("--id", "node-a"))
    wait_for(pid_a.exists, 15)
    b = start(processes, etcd, election, *job_b, opts=("--id", "node-b"))
    wait_for(lambda: queued(etcd, election, 2), 15)

    done = operator("step-down", "--backend", etcd.backend_url, "--wait", election)
    assert done.returncode == 0, done.stderr
    assert "node-a" in done.stdout and "node-b" in done.stdout.splitlines()[-1]
    assert wait_exit(a) == 75
    assert not alive(int(pid_a.read_text()))
    wait_for(pid_b.exists, 15)
    assert election_view(etcd, election)["leader"]["id"] == "node-b"
    release_b.touch()
    assert wait_exit(b) == 0


def test_step_down_under_forever_rejoins_the_back_of_the_queue(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    job_a, release_a, pid_a = hold(tmp_path, "a")
    forever = ("--id", "node-a", "--forever", "--restart-delay", "100ms")
    a = start(processes, etcd, election, *job_a, opts=forever)
    wait_for(pid_a.exists, 15)
    job_b, release_b, pid_b = hold(tmp_path, "b")
    b = start(processes, etcd, election, *job_b, opts=("--id", "node-b"))
    wait_for(lambda: queued(etcd, election, 2), 15)
    assert operator("step-down", "--backend", etcd.backend_url, election).returncode == 0
    wait_for(pid_b.exists, 15)
    wait_for(lambda: [m["id"] for m in election_view(etcd, election)["waiting"]] == ["node-a"], 15)
    assert a.poll() is None
    release_b.touch()
    assert wait_exit(b) == 0
    release_a.touch()
    a.terminate()
    assert wait_exit(a) == 0


def test_step_down_without_leader_exits_3(etcd: EtcdCluster, election: str) -> None:
    done = operator("step-down", "--backend", etcd.backend_url, election)
    assert done.returncode == 3
    assert "no leader" in done.stderr


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def sample(text: str, name: str, election: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f'{name}{{election="{election}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_show_leader_waiter_and_renewals(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    job, release, pid_file = hold(tmp_path, "a")
    ports = free_port(), free_port()
    opts = ("--ttl", "4s", "--kill-grace", "1s", "--renew-interval", "200ms")
    leader = start(processes, etcd, election, *job,
                   opts=(*opts, "--metrics-addr", f"127.0.0.1:{ports[0]}"))  # fmt: skip
    wait_for(pid_file.exists, 15)
    waiter = start(processes, etcd, election, "true",
                   opts=(*opts, "--metrics-addr", f"127.0.0.1:{ports[1]}"))  # fmt: skip
    wait_for(lambda: queued(etcd, election, 2), 15)

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
    release.touch()
    assert wait_exit(leader) == 0 and wait_exit(waiter) == 0


def test_metrics_addr_in_use_is_a_usage_error(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry
) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = start(processes, etcd, election, "true",
                     opts=("--metrics-addr", f"127.0.0.1:{port}"), verbose=0)  # fmt: skip
        assert wait_exit(proc) == 2
    err = proc.read_stderr()
    assert "--metrics-addr" in err and len(err.strip().splitlines()) == 1
