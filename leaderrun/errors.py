"""Exit codes and the exceptions that carry them.

Every failure that reaches the user is one of these: the CLI prints its message on one line and
exits with its code, so scripts and cron can tell *why* leaderrun stopped (SPEC §4).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The exit codes of `leaderrun run` that are not the child's own status."""

    OK = 0
    NO_LEADER = 3
    USAGE = 2
    UNREACHABLE = 69  # EX_UNAVAILABLE
    LOST = 75  # EX_TEMPFAIL: leadership lost while the child ran
    REFUSED = 77  # EX_NOPERM: credentials, permissions, TLS identity
    NOT_EXECUTABLE = 126
    NOT_FOUND = 127


def signal_exit_code(signum: int) -> int:
    """The shell convention for "died from signal N"."""
    return 128 + signum


class LeaderrunError(Exception):
    """A failure with a one-line message for the operator and a distinct exit code."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(LeaderrunError):
    """Bad option, duration, URL or name: nothing was touched in the store."""

    exit_code = ExitCode.USAGE


class BackendUnreachable(LeaderrunError):
    """The backend did not answer within the connect timeout."""

    exit_code = ExitCode.UNREACHABLE


class BackendRefused(LeaderrunError):
    """The backend answered but refused our credentials or permissions."""

    exit_code = ExitCode.REFUSED


class CommandNotFound(LeaderrunError):
    exit_code = ExitCode.NOT_FOUND


class CommandNotExecutable(LeaderrunError):
    exit_code = ExitCode.NOT_EXECUTABLE
