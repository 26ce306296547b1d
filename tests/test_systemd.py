"""The systemd units in examples/ are checked by systemd itself: `systemd-analyze verify` (no
warning at all) and `systemd-analyze security --offline=yes` (exposure score). Also the
credentials rule: a bare --password-file / --zk-auth-file name is read from
$CREDENTIALS_DIRECTORY (`LoadCredential=`).

systemd-analyze ships in Debian's `systemd` package; without it the unit checks are skipped
(with that reason), the credentials tests still run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import clean_env

from leaderrun.errors import UsageError
from leaderrun.settings import read_secret_file

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
UNIT = EXAMPLES / "leaderrun.service"
TEMPLATE = EXAMPLES / "leaderrun@.service"
JOBS = EXAMPLES / "leaderrun-jobs"
LEADERRUN = Path(sys.executable).with_name("leaderrun")
#: Where the shipped units expect leaderrun (`pip install` into the system Python).
SHIPPED_PATH = "/usr/local/bin/leaderrun"
#: `systemd-analyze security --offline=yes` gave 1.5 for both units (systemd 252); 9.2 before
#: the hardening. A little room for other systemd versions' weights, far from "MEDIUM" (>= 5).
MAX_EXPOSURE = 2.0

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze not installed (Debian package `systemd`)",
)


def directives(unit: Path) -> dict[str, list[str]]:
    """Key -> values of a unit file (comments and section headers dropped)."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def installable_copy(unit: Path, directory: Path, name: str) -> Path:
    """The unit with ExecStart pointing at the leaderrun under test (verify checks it exists)
    and the job's files in `directory`."""
    text = unit.read_text()
    assert f"ExecStart={SHIPPED_PATH} " in text
    text = text.replace(f"ExecStart={SHIPPED_PATH} ", f"ExecStart={LEADERRUN} ")
    text = text.replace("/etc/leaderrun/%i.", f"{directory}/%i.")
    copy = directory / name
    copy.write_text(text)
    return copy


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(SYSTEMD_LOG_COLOR="0", SYSTEMD_COLORS="0", PAGER="cat"),
        check=False,
    )


@pytest.fixture
def units(tmp_path: Path) -> dict[str, Path]:
    """Both units, ready for systemd-analyze; the template as its `payments` instance."""
    shutil.copy(JOBS / "payments.toml", tmp_path / "payments.toml")
    shutil.copy(JOBS / "payments.job", tmp_path / "payments.job")
    installable_copy(UNIT, tmp_path, "leaderrun.service")
    installable_copy(TEMPLATE, tmp_path, "leaderrun@.service")
    return {
        "leaderrun.service": tmp_path / "leaderrun.service",
        "leaderrun@.service": tmp_path / "leaderrun@payments.service",
    }


# -- the shipped files ----------------------------------------------------------------------


@pytest.mark.parametrize("unit", [UNIT, TEMPLATE], ids=lambda p: p.name)
def test_unit_has_the_documented_settings(unit: Path) -> None:
    found = directives(unit)
    single = {key: values[-1] for key, values in found.items()}
    assert single["Type"] == "notify"
    assert single["WatchdogSec"] == "30"
    assert single["KillMode"] == "mixed"
    assert single["EnvironmentFile"] == "-/etc/default/leaderrun"
    assert single["LoadCredential"] == "etcd-password:/etc/leaderrun/etcd-password"
    assert single["ExecStart"].startswith(SHIPPED_PATH + " ")
    assert "--forever" in single["ExecStart"].split()
    for key in (
        "NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
        "ProtectKernelModules", "ProtectKernelLogs", "LockPersonality", "RestrictRealtime",
        "RestrictSUIDSGID", "Delegate",
    ):  # fmt: skip
        assert single[key] == "yes", key
    assert single["ProtectSystem"] == "strict"
    assert single["SystemCallArchitectures"] == "native"
    assert single["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6"
    assert single["CapabilityBoundingSet"] == ""
    # /sys/fs/cgroup must stay writable: each term's child gets a cgroup of its own.
    assert "ProtectControlGroups" not in found
    # The path after pip is documented next to ExecStart; /usr/bin/leaderrun does not exist.
    text = unit.read_text()
    assert "/usr/bin/leaderrun" not in text.replace("/usr/bin/leaderrun after pip", "")
    assert "/opt/leaderrun/bin/leaderrun" in text


def test_unit_reads_the_password_from_the_credential() -> None:
    argv = directives(UNIT)["ExecStart"][-1].split()
    assert argv[argv.index("--password-file") + 1] == "etcd-password"


def test_template_runs_one_config_and_one_job_per_instance() -> None:
    argv = directives(TEMPLATE)["ExecStart"][-1].split()
    assert argv[argv.index("--config") + 1] == "/etc/leaderrun/%i.toml"
    assert argv[argv.index("-e") + 1] == "%i"
    assert argv[argv.index("--") + 1 :] == ["/etc/leaderrun/%i.job"]
    assert os.access(JOBS / "payments.job", os.X_OK)


def test_template_example_config_is_accepted(tmp_path: Path) -> None:
    """The template's ExecStart with the example TOML parses and passes the timing rule: it
    gets as far as the (unreachable) backend, exit 69, not a usage error (2). The password
    comes from the credentials directory, as under LoadCredential=."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "etcd-password").write_text("secret\n")
    (credentials / "etcd-password").chmod(0o400)
    config = tmp_path / "payments.toml"
    text = (JOBS / "payments.toml").read_text()
    config.write_text(re.sub(r'(?m)^backend = ".*"$', 'backend = "etcd://127.0.0.1:1"', text))
    argv = directives(TEMPLATE)["ExecStart"][-1].split()
    argv = [a.replace("/etc/leaderrun/%i.toml", str(config)) for a in argv[1:]]
    argv = [a.replace("%i", "payments") for a in argv if a != "--forever"]  # forever retries 69
    argv = [a.replace("/etc/leaderrun/payments.job", "/bin/true") for a in argv]
    done = subprocess.run(
        [str(LEADERRUN), "--connect-timeout", "1s", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(CREDENTIALS_DIRECTORY=str(credentials)),
        check=False,
    )
    assert done.returncode == 69, done.stderr
    assert "cannot reach etcd" in done.stderr


# -- systemd-analyze ------------------------------------------------------------------------


@needs_systemd_analyze
@pytest.mark.parametrize("name", ["leaderrun.service", "leaderrun@.service"])
def test_systemd_analyze_verify_passes(units: dict[str, Path], name: str) -> None:
    done = analyze("verify", str(units[name]))
    assert done.returncode == 0, done.stderr
    # verify only warns (rc 0) on unknown keys or bad values: any output is a defect.
    assert done.stderr.strip() == "", done.stderr
    assert done.stdout.strip() == "", done.stdout


@needs_systemd_analyze
def test_systemd_analyze_verify_catches_the_missing_binary(tmp_path: Path) -> None:
    """The check above is real: the shipped path is refused where leaderrun is not there."""
    if Path(SHIPPED_PATH).exists():
        pytest.skip(f"{SHIPPED_PATH} exists on this machine")
    done = analyze("verify", str(UNIT))
    assert done.returncode != 0
    assert f"{SHIPPED_PATH} is not executable" in done.stderr


@needs_systemd_analyze
@pytest.mark.parametrize("name", ["leaderrun.service", "leaderrun@.service"])
def test_systemd_analyze_security_score(units: dict[str, Path], name: str) -> None:
    done = analyze("security", "--offline=yes", "--no-pager", str(units[name]))
    if done.returncode != 0 and "--offline" in done.stderr:
        pytest.skip(f"systemd-analyze security --offline needs systemd >= 250: {done.stderr}")
    assert done.returncode == 0, done.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) (\w+)", done.stdout)
    assert match, done.stdout[-2000:]
    assert float(match[1]) <= MAX_EXPOSURE, done.stdout


# -- credentials (LoadCredential=) ----------------------------------------------------------


@pytest.fixture
def secrets_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A credentials directory and a working directory, each with its own `etcd-password`."""
    credentials, workdir = tmp_path / "credentials", tmp_path / "work"
    credentials.mkdir()
    workdir.mkdir()
    (credentials / "etcd-password").write_text("from-credentials\n")
    (credentials / "etcd-password").chmod(0o400)
    (workdir / "etcd-password").write_text("from-workdir\n")
    (workdir / "etcd-password").chmod(0o600)
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    return credentials, workdir


def test_bare_name_is_read_from_the_credentials_directory(
    secrets_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials, _ = secrets_dirs
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert read_secret_file("etcd-password", "--password-file") == ("from-credentials", False)


def test_path_with_a_slash_is_a_path_even_under_systemd(
    secrets_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials, workdir = secrets_dirs
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert read_secret_file("./etcd-password", "--password-file")[0] == "from-workdir"
    absolute = str(workdir / "etcd-password")
    assert read_secret_file(absolute, "--zk-auth-file")[0] == "from-workdir"


def test_bare_name_without_systemd_is_relative_to_the_working_directory(
    secrets_dirs: tuple[Path, Path],
) -> None:
    assert read_secret_file("etcd-password", "--password-file") == ("from-workdir", False)


def test_missing_credential_names_the_credentials_directory(
    secrets_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials, _ = secrets_dirs
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    with pytest.raises(UsageError) as caught:
        read_secret_file("zk-auth", "--zk-auth-file")
    assert str(credentials / "zk-auth") in caught.value.message
    assert caught.value.message.startswith("--zk-auth-file: cannot read")


def test_empty_credentials_directory_variable_is_ignored(
    secrets_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "")
    assert read_secret_file("etcd-password", "--password-file")[0] == "from-workdir"
