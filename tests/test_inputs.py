"""Hostile and malformed input: every parser either accepts or refuses with a one-line usage
error (property-based), and the CLI never crashes or leaves anything in the store."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest
from helpers import LEADERRUN_CMD, ProcessRegistry, clean_env, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st
from runs import start, status, wait_exit
from servers import EtcdCluster

from leaderrun.errors import UsageError
from leaderrun.record import identity_of, parse_value
from leaderrun.settings import (
    MAX_DURATION,
    parse_backend_url,
    parse_duration,
    validate_election_name,
    validate_identity,
    validate_prefix,
)

ANY_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=300)


def refuses_cleanly(call: object, *args: object) -> object:
    """Run a parser: it returns a value, or raises UsageError with a single-line message."""
    try:
        return call(*args)  # type: ignore[operator]
    except UsageError as exc:
        assert exc.message and "\n" not in exc.message
        return None


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
def test_parse_duration_accepts_or_refuses_cleanly(text: str) -> None:
    value = refuses_cleanly(parse_duration, text, "--ttl")
    assert value is None or 0 < value <= MAX_DURATION  # type: ignore[operator]


@given(st.integers(1, 10_000), st.sampled_from(["ms", "s", "m", "h", ""]))
def test_parse_duration_units(number: int, unit: str) -> None:
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "": 1}[unit]
    if number * scale > MAX_DURATION:
        return
    assert parse_duration(f"{number}{unit}", "--ttl") == pytest.approx(number * scale)


@pytest.mark.parametrize(
    "text", ["-1s", "0", "0s", "1e309", "10x", "", " ", "nan", "inf", "1.5.2s"]
)
def test_parse_duration_refuses_the_classics(text: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(text, "--ttl")


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
def test_backend_url_accepts_or_refuses_cleanly(text: str) -> None:
    url = refuses_cleanly(parse_backend_url, text)
    if url is not None:
        assert all(0 < ep.port < 65536 for ep in url.endpoints)  # type: ignore[attr-defined]
        assert "@" not in str(url)


@pytest.mark.parametrize(
    "text",
    [
        "etcd://127.0.0.1:99999",
        "etcd://127.0.0.1:-1",
        "etcd://127.0.0.1:0",
        "etcd://:2379",
        "etcd://h1:2379,,h2:2379",
        "etcd://u:p@h:2379",
        "etcd://h:2379?x=1",
        "etcd",
        "://h:1",
    ],
)
def test_backend_url_refuses_the_classics(text: str) -> None:
    with pytest.raises(UsageError):
        parse_backend_url(text)


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
def test_names_and_identities_accept_or_refuse_cleanly(text: str) -> None:
    name = refuses_cleanly(validate_election_name, text)
    assert name is None or ("/" not in text and text not in (".", "..") and len(text) <= 128)
    refuses_cleanly(validate_identity, text)
    prefix = refuses_cleanly(validate_prefix, text)
    assert prefix is None or (text.startswith("/") and "/../" not in text + "/")


@pytest.mark.parametrize("name", ["a/b", "..", ".", "x" * 129, "a\x00b", "ünïcode", "sp ace", ""])
def test_bad_election_names(name: str) -> None:
    with pytest.raises(UsageError):
        validate_election_name(name)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_store_values_never_crash_the_parsers(value: bytes) -> None:
    document = parse_value(value)
    assert document is None or isinstance(document["id"], str)
    assert isinstance(identity_of(value), str)


# -- the CLI with hostile input against a real store -----------------------------------------------


def _store_keys(etcd: EtcdCluster, prefix: str) -> list[str]:
    out = etcd.etcdctl("get", "--prefix", prefix, "--keys-only").stdout
    return [line for line in out.splitlines() if line]


@pytest.mark.parametrize(
    "args",
    [
        [b"-e", b"a/b"],
        [b"-e", b"x" * 200],
        [b"-e", b"bad\xffname"],
        [b"--id", b"two\nlines"],
        [b"--id", b"x" * 300],
        [b"--id", b"\xff\xfe"],
        [b"--ttl", b"-1s"],
        [b"--backend", b"etcd://127.0.0.1:65536"],
        [b"--backend", b"nope://127.0.0.1:1"],
    ],
    ids=lambda a: (
        a[0].decode() + "=" + a[1][:10].decode("latin-1").encode("unicode_escape").decode()
    ),
)
def test_hostile_cli_input_exits_2_and_leaves_nothing(
    etcd: EtcdCluster, processes: ProcessRegistry, args: list[bytes]
) -> None:
    prefix = f"/hostile-{secrets.token_hex(3)}"
    argv = [os.fsencode(a) for a in LEADERRUN_CMD]
    argv += [b"--backend", etcd.backend_url.encode(), b"--prefix", prefix.encode(), b"-e", b"ok"]
    proc = processes.start([*argv, *args, b"--", b"true"], name="hostile")  # type: ignore[list-item]
    assert wait_exit(proc) == 2
    err = proc.read_stderr()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _store_keys(etcd, prefix) == []


@pytest.mark.parametrize(
    "value",
    [b"\x00\x01\x02binary", b'{"truncated": ', b"[1, 2, 3]", b'{"id": 5}', b"x" * 1_000_000],
    ids=["binary", "truncated-json", "json-list", "id-not-str", "huge"],
)
def test_waits_behind_a_foreign_candidate_and_runs_after_it_goes(
    etcd: EtcdCluster,
    election: str,
    processes: ProcessRegistry,
    tmp_path: Path,
    value: bytes,
) -> None:
    lease = etcd.etcdctl("lease", "grant", "60").stdout.split()[1]
    value_file = tmp_path / "value"
    value_file.write_bytes(value)
    subprocess.run(
        f"ETCDCTL_API=3 etcdctl --endpoints {etcd.endpoints} put --lease={lease} "
        f"/leaderrun/{election}/foreign < {value_file}",
        shell=True, check=True, capture_output=True, env=clean_env(),
    )  # fmt: skip
    code, document = status(etcd, election)
    assert code == 0 and document["elections"][0]["leader"]["foreign"] is True
    ran = tmp_path / "ran"
    proc = start(processes, etcd, election, "touch", str(ran))
    wait_for(lambda: "waiting behind <foreign value" in proc.read_stderr(), 15)
    etcd.etcdctl("lease", "revoke", lease)
    assert wait_exit(proc) == 0
    assert ran.exists()


def test_foreign_last_run_record_is_ignored_with_a_warning(
    etcd: EtcdCluster, election: str, processes: ProcessRegistry, tmp_path: Path
) -> None:
    etcd.etcdctl("put", f"/leaderrun/{election}", json.dumps(["not", "ours"]))
    ran = tmp_path / "ran"
    proc = start(processes, etcd, election, "touch", str(ran), opts=("--once-per", "1h"))
    assert wait_exit(proc) == 0
    assert ran.exists()
    assert "did not write" in proc.read_stderr()
