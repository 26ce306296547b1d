"""Hostile and malformed input to the parsers: each one either accepts or refuses with a
one-line usage error (property-based), and no value found in a store crashes them. The CLI
with the same kinds of input, and foreign values in a real store, are in test_contract.py
(on every backend)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leaderrun.errors import UsageError
from leaderrun.record import identity_of, parse_value
from leaderrun.settings import (
    MAX_DURATION,
    SCHEME_OPTIONS,
    default_election_name,
    is_interpreter,
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


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1m30s", 90), ("1h5m", 3900), ("2m500ms", 120.5), ("1h0m1s", 3601), ("1.5m", 90)],
)
def test_parse_duration_compounds(text: str, seconds: float) -> None:
    assert parse_duration(text, "--ttl") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["30s1m", "1m1m", "1m 30s", "1m30", "ms", "1hm", "8d1h"])
def test_parse_duration_refuses_bad_compounds(text: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(text, "--ttl")


@pytest.mark.parametrize(
    "command",
    ["sh", "/bin/sh", "bash", "dash", "zsh", "ksh", "fish", "env", "python", "python2",
     "python3", "python3.11", "/usr/bin/python3.12", "pypy3", "perl", "perl5.36", "ruby",
     "ruby3.2", "node", "php", "php8.2", "busybox", "nice", "nohup", "timeout", "sudo"],
)  # fmt: skip
def test_interpreters_have_no_default_election_name(command: str) -> None:
    assert is_interpreter(command)
    with pytest.raises(UsageError, match="--election") as refused:
        default_election_name(command)
    assert "\n" not in refused.value.message


@pytest.mark.parametrize(
    "command", ["backup-db", "./rotate-logs.sh", "/opt/jobs/settle", "job.py", "shred", "envoy"]
)
def test_job_names_are_the_default_election_name(command: str) -> None:
    assert not is_interpreter(command)
    assert default_election_name(command) == command.rsplit("/", 1)[-1]


@pytest.mark.parametrize(
    ("text", "scheme"),
    [("zookeeper://h1:2181,h2/chroot", "zk"), ("ZooKeeper://h", "zk"), ("ETCD://h", "etcd")],
)
def test_backend_scheme_aliases_and_case(text: str, scheme: str) -> None:
    url = parse_backend_url(text)
    assert url.scheme == scheme
    assert scheme in SCHEME_OPTIONS and str(url).startswith(f"{scheme}://")


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("zk//h", "zk://h:2181"),
        ("zk:/h", "zk://h:2181"),
        ("zk:/h:2182/root", "zk://h:2182/root"),
        ("zookeeper:h1,h2", "zk://h1:2181,h2"),
        ("etcds//h", "etcds://h:2379"),
        ("127.0.0.1:2379", "etcd://127.0.0.1:2379"),
    ],
)
def test_backend_url_without_separator_suggests_one(text: str, hint: str) -> None:
    with pytest.raises(UsageError, match=f"did you mean {hint}\\?"):
        parse_backend_url(text)


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
