"""leaderrun's own output: quiet unless something is wrong (SPEC §5).

Default level is WARNING, so a cron line that ran or skipped its job prints nothing; `-v` adds
state changes, `-vv` debug detail, `-q` leaves errors only. On a terminal the text goes through
rich; to a file or journald it is one plain line per event, never wrapped or coloured.
"""

from __future__ import annotations

import logging
import os
import sys

from rich.console import Console
from rich.logging import RichHandler

LEVELS = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def level_for(verbosity: int) -> int:
    if verbosity >= 2:
        return logging.DEBUG
    return LEVELS[max(-1, verbosity)]


def setup_logging(verbosity: int) -> None:
    handler: logging.Handler
    if sys.stderr.isatty():
        handler = RichHandler(
            console=Console(stderr=True),
            show_path=False,
            markup=False,
            log_time_format=f"[{TIME_FORMAT}]",
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s leaderrun[{os.getpid()}] %(levelname)s %(message)s", TIME_FORMAT
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_for(verbosity))
    if verbosity < 2:
        # Client libraries are chatty at INFO; their news reaches the operator through ours.
        for noisy in ("pyetcd", "grpc", "kazoo"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
