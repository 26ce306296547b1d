"""The examples users copy must work as written: `make demo` shows a handover."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import clean_env

ROOT = Path(__file__).resolve().parent.parent


def test_demo_shows_a_handover_after_sigkill() -> None:
    leaderrun = Path(sys.executable).with_name("leaderrun")
    done = subprocess.run(
        ["bash", str(ROOT / "examples" / "demo.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(DEMO_LEADERRUN=str(leaderrun)),
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "killing the leader" in done.stdout
    assert "=== new leader:" in done.stdout
    assert "is gone" in done.stdout
