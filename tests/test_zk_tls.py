"""ZooKeeper over TLS (`zks://`): a real server with `secureClientPort` (Netty connection
factory, PEM key and trust stores, `ssl.clientAuth=need`) and a throwaway CA (tests/certs.py).

The server also keeps its plaintext `clientPort`, which only the fixture's health checks use:
every leaderrun here is given the TLS port.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from certs import PKI, make_pki
from helpers import LEADERRUN_CMD, ProcessRegistry, clean_env
from runs import URL, sh, status, wait_exit
from servers import ZkEnsemble, free_port


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("zk-pki"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """Another CA's client certificate: valid, but not signed by a CA the server trusts."""
    return make_pki(tmp_path_factory.mktemp("zk-pki-other"))


@pytest.fixture(scope="module")
def zk_tls(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[str]:
    """A standalone ZooKeeper whose secureClientPort requires a client certificate signed by
    the test CA; yields that port's host:port."""
    tmp = tmp_path_factory.mktemp("zk-tls")
    keystore = tmp / "server-keystore.pem"  # ZooKeeper's PEM key store: certificate and key
    keystore.write_text(pki.server.cert.read_text() + pki.server.key.read_text())
    keystore.chmod(0o600)
    ensemble = ZkEnsemble(tmp, size=1)
    port = free_port()
    ensemble.members[0].extra_config = [
        "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory",
        f"secureClientPort={port}",
        "secureClientPortAddress=127.0.0.1",
        f"ssl.keyStore.location={keystore}",
        "ssl.keyStore.type=PEM",
        f"ssl.trustStore.location={pki.ca}",
        "ssl.trustStore.type=PEM",
        "ssl.clientAuth=need",
    ]
    ensemble.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        ensemble.stop()


def run(
    processes: ProcessRegistry,
    url: str,
    election: str,
    *opts: str,
    command: tuple[str, ...] = ("true",),
) -> tuple[int, str, float]:
    """leaderrun to its exit: its code, its stderr and how long it took."""
    started = time.monotonic()
    proc = processes.start(
        [*LEADERRUN_CMD, "--backend", url, "-e", election, "--connect-timeout", "5s", *opts,
         "--", *command],
        env=clean_env(),
    )  # fmt: skip
    code = wait_exit(proc)
    return code, proc.read_stderr(), time.monotonic() - started


def client_cert(pki: PKI) -> tuple[str, ...]:
    return ("--cert", str(pki.client.cert), "--key", str(pki.client.key))


def test_client_with_a_certificate_of_the_trusted_ca_runs_the_job(
    zk_tls: str, pki: PKI, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    out = tmp_path / "backend"
    auth = tmp_path / "zk-auth"
    auth.write_text("app:zk-tls-pw-41\n")
    auth.chmod(0o600)
    code, err, _ = run(
        processes, f"zks://{zk_tls}", election, "-v",
        "--cacert", str(pki.ca), *client_cert(pki), "--zk-auth-file", str(auth),
        command=sh(f"echo $LEADERRUN_BACKEND $LEADERRUN_FENCING_TOKEN > {out}"),
    )  # fmt: skip
    assert code == 0, err
    backend, token = out.read_text().split()
    assert backend == f"zks://{zk_tls}" and int(token) > 0
    assert "elected" in err and "zk-tls-pw-41" not in err
    # `status` goes over TLS as well: the election is there, with no leader now (exit 3).
    code, document = status(
        URL(f"zks://{zk_tls}"), election, "--cacert", str(pki.ca), *client_cert(pki)
    )
    assert code == 3 and document is not None, document


def test_client_certificate_of_another_ca_is_refused_with_77_at_once(
    zk_tls: str, pki: PKI, stranger: PKI, election: str, processes: ProcessRegistry
) -> None:
    """The server refuses the handshake (ssl.clientAuth=need, the certificate's CA is not in
    its trust store): a refusal, not an outage, so 77 without waiting out --connect-timeout."""
    code, err, took = run(
        processes, f"zks://{zk_tls}", election, "--cacert", str(pki.ca), *client_cert(stranger)
    )
    assert code == 77, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "refused our client certificate" in lines[0] and "--cert and --key" in lines[0]
    assert took < 5.0, f"took {took:.1f}s: waited out --connect-timeout 5s"


def test_no_client_certificate_where_one_is_needed_exits_77_asking_for_one(
    zk_tls: str, pki: PKI, election: str, processes: ProcessRegistry
) -> None:
    code, err, _ = run(processes, f"zks://{zk_tls}", election, "--cacert", str(pki.ca))
    assert code == 77, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "none was given" in lines[0] and "--cert and --key" in lines[0]


def test_server_certificate_we_do_not_trust_exits_77_naming_cacert(
    zk_tls: str, pki: PKI, election: str, processes: ProcessRegistry
) -> None:
    code, err, _ = run(
        processes, f"zks://{zk_tls}", election, "--cacert", str(pki.other_ca), *client_cert(pki)
    )
    assert code == 77, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "do not trust the server's certificate" in lines[0], err
    assert "--cacert" in lines[0]


def test_plaintext_zk_client_to_the_tls_port_exits_69_pointing_to_zks(
    zk_tls: str, election: str, processes: ProcessRegistry
) -> None:
    """The server closes a connection that does not start with a TLS handshake, without a
    word: to the client that looks like a server not serving (yet), which is 69 (unreachable,
    retried under --forever), not a refusal of our identity; the message names the likely
    fix."""
    code, err, _ = run(processes, f"zk://{zk_tls}", election, "--connect-timeout", "2s")
    assert code == 69, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "cannot reach ZooKeeper" in lines[0] and "zks://" in lines[0]


@pytest.mark.parametrize("option", ["--cacert", "--cert", "--key"])
def test_tls_files_with_zk_scheme_are_a_usage_error(
    pki: PKI, election: str, processes: ProcessRegistry, option: str
) -> None:
    """zk:// stays plaintext: a TLS file with it is an error naming it, not silently unused."""
    code, err, _ = run(
        processes, f"zk://127.0.0.1:{free_port()}", election, option, str(pki.client.cert)
    )
    assert code == 2, err
    assert f"{option} is for" in err and "zk:// does not use it" in err and "zks://" in err
