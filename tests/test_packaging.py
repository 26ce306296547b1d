"""What a user installs: the wheel's metadata (classifiers, license file, dependency bounds
that still admit what is installed here), `py.typed`, the changelog, and the man page
generated from the click commands (checked by groff/man when present).

The wheel is built with `pip wheel --no-deps` (setuptools from the configured index); where
the build backend cannot be fetched (offline, no index) those checks are skipped with that
reason and the source-tree checks still run.
"""

from __future__ import annotations

import email
import email.message
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import click
import pytest
from helpers import clean_env
from packaging.requirements import Requirement

import leaderrun
from leaderrun.cli import cli
from leaderrun.manpage import exit_codes, generate

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
#: Dependencies without an upper bound, and why (see the comment in pyproject.toml).
UNBOUNDED = {"rich"}  # its majors (13 -> 15) changed nothing we use


# -- the source tree ------------------------------------------------------------------------


def test_license_is_the_full_apache_2_text() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert PROJECT["license"] == {"text": "Apache-2.0"}
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert "APPENDIX: How to apply the Apache License to your work." in text


def test_classifiers() -> None:
    classifiers = PROJECT["classifiers"]
    assert "License :: OSI Approved :: Apache Software License" in classifiers
    assert "Typing :: Typed" in classifiers
    assert "Operating System :: POSIX :: Linux" in classifiers
    assert any(c.startswith("Development Status :: ") for c in classifiers)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f"Programming Language :: Python :: {version}" in classifiers
    assert len(classifiers) == len(set(classifiers))


def test_dependencies_have_upper_bounds_that_admit_what_is_installed() -> None:
    """`pip install -e .[dev]` must keep resolving to this venv's versions: every bound
    admits the installed release, and every dependency but the listed ones has an upper
    bound (`<N`) below its next breaking major."""
    for line in PROJECT["dependencies"]:
        requirement = Requirement(line)
        installed = importlib.metadata.version(requirement.name)
        assert requirement.specifier.contains(installed, prereleases=True), (line, installed)
        uppers = [s for s in requirement.specifier if s.operator in ("<", "<=", "~=", "==")]
        if requirement.name in UNBOUNDED:
            assert not uppers, f"{line}: update UNBOUNDED"
        else:
            assert uppers, f"{line} has no upper bound"


def test_py_typed_is_package_data() -> None:
    assert (ROOT / "leaderrun" / "py.typed").is_file()
    package_data = PYPROJECT["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["leaderrun"]


def test_changelog_has_this_version_and_the_first() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"(?m)^## (\d+\.\d+\.\d+)\b", text)
    assert headings[:2] == ["0.2.0", "0.1.0"]
    assert leaderrun.__version__ == headings[0], "the newest CHANGELOG entry is this version"


# -- the wheel ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # From a copy: setuptools leaves build/ and *.egg-info behind in the tree it builds.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "leaderrun", source / "leaderrun", ignore=shutil.ignore_patterns("__pycache__")
    )
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1"),
        check=False,
    )
    if done.returncode != 0 and re.search(
        r"Could not find a version that satisfies the requirement (setuptools|wheel)"
        r"|No matching distribution found for (setuptools|wheel)",
        done.stderr,
    ):
        pytest.skip(f"build backend unavailable (offline?): {done.stderr.strip()[-300:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = out.glob("leaderrun-*.whl")
    return built


def wheel_metadata(wheel: Path) -> tuple[email.message.Message, list[str]]:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(archive.read(metadata)), names


def test_wheel_metadata(wheel: Path) -> None:
    metadata, _ = wheel_metadata(wheel)
    assert metadata["Name"] == "leaderrun"
    assert metadata["Version"] == leaderrun.__version__
    assert metadata.get_all("Classifier") == PROJECT["classifiers"]
    assert "LICENSE" in (metadata.get_all("License-File") or [])
    requires = {str(Requirement(r)) for r in metadata.get_all("Requires-Dist") or []}
    for line in PROJECT["dependencies"]:
        assert str(Requirement(line)) in requires


def test_wheel_ships_license_and_py_typed(wheel: Path) -> None:
    _, names = wheel_metadata(wheel)
    assert "leaderrun/py.typed" in names
    assert any(re.fullmatch(r"leaderrun-[^/]+\.dist-info/(licenses/)?LICENSE", n) for n in names)
    assert "leaderrun/manpage.py" in names


# -- the man page ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manpage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """build/leaderrun.1 as `python -m leaderrun.manpage` writes it (in a scratch dir)."""
    out = tmp_path_factory.mktemp("man") / "build" / "leaderrun.1"
    done = subprocess.run(
        [sys.executable, "-m", "leaderrun.manpage", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(SOURCE_DATE_EPOCH="1764547200"),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return out


def test_manpage_structure(manpage: Path) -> None:
    text = manpage.read_text()
    assert text.startswith(f'.TH LEADERRUN 1 "2025-12-01" "leaderrun {leaderrun.__version__}"')
    sections = re.findall(r'(?m)^\.SH "?([^"\n]+)"?$', text)
    assert sections == [
        "NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "EXIT STATUS", "ENVIRONMENT",
        "FILES", "SEE ALSO",
    ]  # fmt: skip
    assert re.search(r"(?m)^leaderrun \\- \S", text)
    # No line may start with a stray control character, and every .TP has a tag line.
    for number, line in enumerate(text.splitlines(), 1):
        assert not line.startswith("'"), (number, line)
        assert not line.startswith(".") or re.match(r"\.(TH|SH|SS|PP|TP|br|nf|fi)\b", line), (
            number,
            line,
        )


def test_manpage_lists_every_command_option_env_var_and_exit_code(manpage: Path) -> None:
    page = manpage.read_text().replace("\\-", "-").replace("\\e", "\\")
    for name, command in cli.commands.items():
        assert f'.SS "leaderrun {name} ' in page
        for param in command.params:
            if not isinstance(param, click.Option) or param.hidden:
                continue
            for opt in param.opts:
                assert opt in page, (name, opt)
            if isinstance(param.envvar, str):
                assert param.envvar in page, (name, param.envvar)
            if isinstance(param.show_default, str):
                assert param.show_default in page
    assert "Default: etcd://127.0.0.1:2379." in page
    assert "UNSET" not in page and "Sentinel" not in page
    rows = exit_codes(cli.commands["run"].epilog or "")
    assert [code for code, _ in rows] == ["child's", "0", "2", "69", "75", "77", "126 / 127",
                                          "128+N"]  # fmt: skip
    exit_status = page.split(".SH EXIT STATUS", 1)[1].split(".SH ", 1)[0]
    for code, _ in rows:
        assert f"\\fB{code}\\fR" in exit_status
    for variable in ("CREDENTIALS_DIRECTORY", "LEADERRUN_PASSWORD", "LEADERRUN_FENCING_TOKEN"):
        assert variable in page


def test_manpage_is_reproducible() -> None:
    import datetime

    day = datetime.date(2026, 1, 2)
    assert generate(date=day) == generate(date=day)


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed (Debian `groff`)")
def test_manpage_formats_without_groff_warnings(manpage: Path) -> None:
    done = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(manpage)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(LC_ALL="C.UTF-8"),
        check=False,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr


@pytest.mark.skipif(shutil.which("man") is None, reason="man not installed (Debian `man-db`)")
def test_man_renders_the_page(manpage: Path) -> None:
    done = subprocess.run(
        ["man", "--warnings", "-l", str(manpage)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(LC_ALL="C.UTF-8", MANWIDTH="80", MANPAGER="cat", PAGER="cat"),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr
    rendered = " ".join(re.sub(r".\x08", "", done.stdout).split())  # no overstrike, no justify
    assert "NAME leaderrun - run a command on exactly one machine of a cluster" in rendered
    assert "EXIT STATUS" in rendered and "--password-file FILE" in rendered
