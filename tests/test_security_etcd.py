"""etcd with TLS (client-certificate auth) and with user/password auth limited to the prefix.

Certificates are generated at test time (tests/certs.py). The servers also listen on a plain
loopback port that only the fixtures use for health checks and administration.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from certs import PKI, make_pki
from helpers import LEADERRUN_CMD, ProcessRegistry, clean_env, wait_for
from runs import sh, start, wait_exit
from servers import EtcdCluster, free_port

PASSWORD = "pw-Zq8-not-in-logs"
ROOT = "root:root-pw-93"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _listen_tls_too(cluster: EtcdCluster, pki: PKI, *extra: str) -> str:
    """Add an https listener to the single member; returns its host:port."""
    member = cluster.members[0]
    tls_port = free_port()
    member.extra_args += [
        "--listen-client-urls", f"{member.client_url},https://127.0.0.1:{tls_port}",
        "--cert-file", str(pki.server.cert), "--key-file", str(pki.server.key), *extra,
    ]  # fmt: skip
    return f"127.0.0.1:{tls_port}"


@pytest.fixture(scope="module")
def etcd_mtls(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[str]:
    """etcd whose TLS port requires a client certificate signed by the test CA."""
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd-mtls"))
    endpoint = _listen_tls_too(cluster, pki, "--client-cert-auth", "--trusted-ca-file", str(pki.ca))
    cluster.start()
    try:
        yield endpoint
    finally:
        cluster.stop()


class AuthEtcd:
    def __init__(self, cluster: EtcdCluster, tls_endpoint: str) -> None:
        self.cluster = cluster
        self.plain = cluster.backend_url
        self.tls = f"etcds://{tls_endpoint}"


@pytest.fixture(scope="module")
def etcd_auth(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[AuthEtcd]:
    """etcd with auth enabled and a user `app` whose role may only touch /leaderrun/."""
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd-auth"))
    tls_endpoint = _listen_tls_too(cluster, pki)
    cluster.start()
    for args in (
        ("user", "add", ROOT),
        ("role", "add", "leaderrun"),
        ("role", "grant-permission", "leaderrun", "readwrite", "/leaderrun/", "--prefix=true"),
        ("user", "add", f"app:{PASSWORD}"),
        ("user", "grant-role", "app", "leaderrun"),
        ("role", "add", "leaderrun-status"),
        ("role", "grant-permission", "leaderrun-status", "read", "/leaderrun/", "--prefix=true"),
        ("user", "add", f"viewer:{PASSWORD}"),
        ("user", "grant-role", "viewer", "leaderrun-status"),
        ("auth", "enable"),
    ):
        cluster.etcdctl(*args)
    try:
        yield AuthEtcd(cluster, tls_endpoint)
    finally:
        cluster.stop()


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "etcd-password"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


def run(
    processes: ProcessRegistry,
    url: str,
    election: str,
    *opts: str,
    command: tuple[str, ...] = ("true",),
    env: dict[str, str] | None = None,
) -> tuple[int, str]:
    proc = processes.start(
        [*LEADERRUN_CMD, "--backend", url, "-e", election, "--connect-timeout", "3s", *opts,
         "--", *command],
        env=clean_env(env),
    )  # fmt: skip
    code = wait_exit(proc)
    return code, proc.read_stderr()


# -- TLS ------------------------------------------------------------------------------------------


def test_tls_with_client_certificate(
    etcd_mtls: str, pki: PKI, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    out = tmp_path / "backend"
    code, err = run(
        processes, f"etcds://{etcd_mtls}", election,
        "--cacert", str(pki.ca), "--cert", str(pki.client.cert), "--key", str(pki.client.key),
        command=sh(f"echo $LEADERRUN_BACKEND $LEADERRUN_FENCING_TOKEN > {out}"),
    )  # fmt: skip
    assert code == 0, err
    backend, token = out.read_text().split()
    assert backend == f"etcds://{etcd_mtls}" and int(token) > 0


def test_tls_is_on_when_a_cert_option_is_given_with_etcd_scheme(
    etcd_mtls: str, pki: PKI, election: str, processes: ProcessRegistry
) -> None:
    code, err = run(
        processes, f"etcd://{etcd_mtls}", election,
        "--cacert", str(pki.ca), "--cert", str(pki.client.cert), "--key", str(pki.client.key),
    )  # fmt: skip
    assert code == 0, err


@pytest.mark.parametrize("case", ["no-client-cert", "wrong-ca"])
def test_tls_failure_exits_77_with_one_line(
    etcd_mtls: str, pki: PKI, election: str, processes: ProcessRegistry, case: str
) -> None:
    if case == "wrong-ca":
        opts = ("--cacert", str(pki.other_ca), "--cert", str(pki.client.cert),
                "--key", str(pki.client.key))  # fmt: skip
    else:
        opts = ("--cacert", str(pki.ca))
    code, err = run(processes, f"etcds://{etcd_mtls}", election, *opts)
    assert code == 77, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cert_without_key_is_a_usage_error(
    pki: PKI, election: str, processes: ProcessRegistry
) -> None:
    code, err = run(processes, "etcds://127.0.0.1:1", election, "--cert", str(pki.client.cert))
    assert code == 2 and "--cert and --key" in err


# -- user and password ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["plain", "tls"])
def test_user_password_works_with_and_without_tls(
    etcd_auth: AuthEtcd, pki: PKI, election: str, processes: ProcessRegistry,
    tmp_path: Path, password_file: Path, transport: str,
) -> None:  # fmt: skip
    env_file = tmp_path / "env"
    url = etcd_auth.tls if transport == "tls" else etcd_auth.plain
    tls = ("--cacert", str(pki.ca)) if transport == "tls" else ()
    code, err = run(
        processes, url, election, "-vv", "--user", "app", "--password-file", str(password_file),
        *tls, command=sh(f"env > {env_file}"),
    )  # fmt: skip
    assert code == 0, err
    assert PASSWORD not in err
    assert PASSWORD not in env_file.read_text()


def test_password_from_environment(
    etcd_auth: AuthEtcd, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    env_file = tmp_path / "env"
    code, err = run(
        processes, etcd_auth.plain, election, "--user", "app",
        command=sh(f"env > {env_file}; cat /proc/$PPID/cmdline > {tmp_path}/cmdline"),
        env={"LEADERRUN_PASSWORD": PASSWORD},
    )  # fmt: skip
    assert code == 0, err
    assert PASSWORD not in env_file.read_text()
    assert PASSWORD.encode() not in (tmp_path / "cmdline").read_bytes()


def test_wrong_password_exits_77_without_echoing_it(
    etcd_auth: AuthEtcd, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password-717\n")
    wrong.chmod(0o600)
    code, err = run(
        processes, etcd_auth.plain, election, "-vv", "--user", "app",
        "--password-file", str(wrong),
    )  # fmt: skip
    assert code == 77, err
    assert "not-the-password-717" not in err
    assert "refused" in err


def test_no_permission_on_prefix_exits_77(
    etcd_auth: AuthEtcd, election: str, processes: ProcessRegistry, password_file: Path
) -> None:
    code, err = run(
        processes, etcd_auth.plain, election, "--prefix", "/elsewhere", "--user", "app",
        "--password-file", str(password_file),
    )  # fmt: skip
    assert code == 77, err
    assert "permission denied" in err
    assert len(err.strip().splitlines()) == 1


def test_no_credentials_on_auth_enabled_etcd_exits_77(
    etcd_auth: AuthEtcd, election: str, processes: ProcessRegistry
) -> None:
    code, err = run(processes, etcd_auth.plain, election)
    assert code == 77, err


def test_world_readable_password_file_is_warned_about(
    etcd_auth: AuthEtcd, election: str, processes: ProcessRegistry, password_file: Path
) -> None:
    password_file.chmod(0o644)
    code, err = run(
        processes, etcd_auth.plain, election, "--user", "app",
        "--password-file", str(password_file),
    )  # fmt: skip
    assert code == 0
    assert "readable by group or others" in err and "chmod 600" in err


def test_status_with_read_only_user_shows_no_secret(
    etcd_auth: AuthEtcd, election: str, processes: ProcessRegistry, password_file: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    release = tmp_path / "release"
    creds = ("--user", "app", "--password-file", str(password_file))
    leader = start(
        processes, etcd_auth.cluster, election,
        *sh(f"while [ ! -e {release} ]; do sleep 0.05; done"),
        opts=(*creds, "--metrics-addr", f"127.0.0.1:{(port := free_port())}"),
    )  # fmt: skip

    viewer = ("--user", "viewer", "--password-file", str(password_file))

    def status() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*LEADERRUN_CMD, "status", "--backend", etcd_auth.plain, *viewer, "--json", election],
            capture_output=True, text=True, timeout=30, env=clean_env(), check=False,
        )  # fmt: skip

    done = wait_for(lambda: (d := status()).returncode == 0 and d, 15)
    assert PASSWORD not in done.stdout + done.stderr
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert PASSWORD not in response.read().decode()
    release.touch()
    assert wait_exit(leader) == 0
