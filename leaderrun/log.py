"""leaderrun's own output: quiet unless something is wrong (SPEC §5), and never in the way (§3).

Default level is WARNING, so a cron line that ran or skipped its job prints nothing; `-v` adds
state changes, `-vv` debug detail, `-q` leaves errors only. On a terminal the text goes through
rich; to a file or journald it is one plain line per event, never wrapped or coloured; with
`--log-format json` it is one JSON object per line for log shippers.

Every state change is logged with `extra=event(name, **fields)`, so the text and JSON formats
carry the same facts: the message for people, the fields for machines.

Logging never blocks the caller (SPEC §3 "Its own output never blocks it"): a log call formats
its line and puts it into a bounded in-memory queue; a daemon thread of the same process writes
the queue to fd 2. If stderr stalls (a full pipe, a stuck log collector) the queue fills and
further lines are dropped and counted (`dropped_lines()`); once output flows again the writer
reports the gap with one line "leaderrun: dropped N log lines (stderr was blocked)" at the place
in the stream where the lines are missing. fd 2 itself is never made non-blocking: the child
shares that open file description and would see EAGAIN.

The queue and its writer thread belong to one process. leaderrun forks (guard -> worker), so a
forked child starts with an empty queue, fresh locks and no writer; the writer is started by the
first line logged in a process. The final lines are written at interpreter exit (`atexit`, up to
0.5 s); a process leaving through `os._exit` must call `flush(timeout)` itself.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import os
import select
import sys
import threading
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, cast

if TYPE_CHECKING:  # rich is imported only when stderr is a terminal (it costs ~100 ms)
    from rich.console import Console
    from rich.logging import RichHandler

LEVELS = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
FORMATS = ("text", "json")

#: Fields every JSON line carries (election, identity); set once at start-up.
CONTEXT: dict[str, Any] = {}

#: Bounds of the queue of lines not yet written to stderr; lines beyond them are dropped.
MAX_QUEUED_LINES = 1000
MAX_QUEUED_BYTES = 256 * 1024

#: The event of the line that reports dropped lines (its field `dropped` is their number).
DROPPED_EVENT = "log_lines_dropped"
DROPPED_MESSAGE = "leaderrun: dropped %d log lines (stderr was blocked)"

#: How long the interpreter's exit waits for the queue to drain.
EXIT_FLUSH_TIMEOUT = 0.5

_STDERR_FD = 2


def event(name: str, **fields: Any) -> dict[str, Any]:
    """`extra=` for a log call: the event's name and its machine-readable fields."""
    return {"event": name, "fields": fields}


def level_for(verbosity: int) -> int:
    if verbosity >= 2:
        return logging.DEBUG
    return LEVELS[max(-1, verbosity)]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, event, message, context and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "log"),
            "message": record.getMessage(),
            "leaderrun_pid": GUARD_PID,
            **CONTEXT,
            **getattr(record, "fields", {}),
        }
        if record.name not in ("leaderrun", "root") and not record.name.startswith("leaderrun."):
            document["logger"] = record.name
        return json.dumps(document, default=str)


GUARD_PID = os.getpid()


# --- the non-blocking queue and its writer thread --------------------------------------------


class _Gap:
    """A place in the queue where lines were dropped, and how many."""

    __slots__ = ("count",)

    def __init__(self, count: int = 0) -> None:
        self.count = count


class _Outbox:
    """One process's queue of formatted lines and the daemon thread that writes it to fd 2.

    The lock is re-entrant because a signal handler may log while the main thread is inside
    `put`; it is only ever held for a few list operations, never across a write.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.RLock()
        self.has_work = threading.Condition(self.lock)  # only the writer waits on it
        self.idle = threading.Condition(self.lock)  # `flush` waits on it
        self.entries: collections.deque[bytes | _Gap] = collections.deque()
        self.lines = 0  # lines (not gaps) in `entries`
        self.bytes = 0  # their size
        self.dropped = 0  # lines this process dropped, ever
        self.writing = False  # the writer holds an entry it took off the queue
        self.writer: threading.Thread | None = None

    def put(self, data: bytes) -> None:
        """Queue one formatted line (or several, from rich), or drop it; never waits."""
        with self.lock:
            full = self.lines >= MAX_QUEUED_LINES or (
                self.bytes > 0 and self.bytes + len(data) > MAX_QUEUED_BYTES
            )
            if full or (self.writer is None and not self._start_writer()):
                self._drop()
            else:
                self.entries.append(data)
                self.lines += 1
                self.bytes += len(data)
                self.has_work.notify()

    def flush(self, timeout: float) -> bool:
        with self.lock:
            return self.idle.wait_for(lambda: not self.entries and not self.writing, timeout)

    def _start_writer(self) -> bool:
        thread = threading.Thread(target=self._run, name="leaderrun-log-writer", daemon=True)
        self.writer = thread  # before start(): a signal handler logging meanwhile must not race
        try:
            thread.start()
        except RuntimeError:  # interpreter shutting down, or no more threads
            self.writer = None
            return False
        return True

    def _drop(self) -> None:
        """Count a dropped line at the end of the queue (lock held)."""
        self.dropped += 1
        gap = self.entries[-1] if self.entries else None
        if not isinstance(gap, _Gap):
            gap = _Gap()
            self.entries.append(gap)
        gap.count += 1

    def _lost(self) -> None:
        """Count the line the writer failed to write; it is reported before the next one."""
        with self.lock:
            self.dropped += 1
            gap = self.entries[0] if self.entries else None
            if isinstance(gap, _Gap):
                gap.count += 1
            else:
                self.entries.appendleft(_Gap(1))

    def _run(self) -> None:
        while True:
            with self.lock:
                self.writing = False
                while not self.entries:
                    self.idle.notify_all()
                    self.has_work.wait()
                entry = self.entries.popleft()
                self.writing = True
                if isinstance(entry, bytes):
                    self.lines -= 1
                    self.bytes -= len(entry)
            if isinstance(entry, _Gap):
                _write_all(_dropped_notice(entry.count))  # if it fails, the count stays counted
            elif not _write_all(entry):
                self._lost()


def _write_all(data: bytes) -> bool:
    """Write to fd 2, waiting as long as it takes (only ever in the writer thread)."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(_STDERR_FD, view)
        except BlockingIOError:
            # Someone else (the child, the shell) made the shared file description
            # non-blocking; wait here for room instead of spinning.
            try:
                poller = select.poll()
                poller.register(_STDERR_FD, select.POLLOUT)
                poller.poll()
            except OSError:
                return False
            continue
        except OSError:  # EPIPE (reader gone), EBADF (closed), EIO ...
            return False
        view = view[written:]
    return True


_outbox = _Outbox()


def _current() -> _Outbox:
    if _outbox.pid != os.getpid():  # a fork that did not run the at-fork hooks
        _reset_after_fork()
    return _outbox


def _reset_after_fork() -> None:
    """In a forked child: a fresh queue, lock and (lazily) writer; the parent's queued lines
    stay with the parent, which writes them. Runs before any other code of the child, so a
    lock the parent's writer or another thread held at the fork cannot deadlock the child."""
    global _outbox
    _outbox = _Outbox()
    if _rich_handler is not None:
        # rich's Console has locks of its own that another thread may have held at the fork
        # (its class is reused: no import in a child that is about to exec).
        _rich_handler.console = _new_console(type(_rich_handler.console))


os.register_at_fork(after_in_child=_reset_after_fork)


def _enqueue(data: bytes) -> None:
    _current().put(data)


def flush(timeout: float) -> bool:
    """Wait up to `timeout` seconds for this process's queued lines to be written to stderr.

    True once the queue is empty; False if stderr did not take them in time (they stay queued).
    For a process about to leave with `os._exit`; normal interpreter exit flushes by itself.
    """
    return _current().flush(timeout)


def dropped_lines() -> int:
    """Log lines this process dropped (or failed to write) since it started; a forked child
    counts from 0. Exported as the metric `leaderrun_log_lines_dropped_total`."""
    return _current().dropped


def _flush_at_exit() -> None:
    flush(EXIT_FLUSH_TIMEOUT)


atexit.register(_flush_at_exit)


# --- handlers --------------------------------------------------------------------------------

#: Encoding of the bytes written to fd 2, and the formatter of the "dropped N lines" line.
_encoding = "utf-8"
_notice_formatter: logging.Formatter = logging.Formatter("%(message)s")
_rich_handler: RichHandler | None = None


def _encode(text: str) -> bytes:
    return text.encode(_encoding, "backslashreplace")


def _dropped_notice(count: int) -> bytes:
    record = logging.makeLogRecord(
        {
            "name": "leaderrun",
            "levelno": logging.WARNING,
            "levelname": logging.getLevelName(logging.WARNING),
            "msg": DROPPED_MESSAGE,
            "args": (count,),
            **event(DROPPED_EVENT, dropped=count),
        }
    )
    try:
        text = _notice_formatter.format(record)
    except Exception:
        text = record.getMessage()
    return _encode(text + "\n")


class NonBlockingHandler(logging.Handler):
    """Formats the record in the caller (its time, arguments and traceback are those of the
    call) and queues the line for the writer thread; never waits for stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = _encode(self.format(record) + "\n")
        except Exception:
            self.handleError(record)
            return
        _enqueue(data)

    def flush(self) -> None:
        """Does not wait: use the module's `flush(timeout)` to wait for the writer."""

    def handleError(self, record: logging.LogRecord) -> None:
        # The default prints a traceback to sys.stderr synchronously; queue one line instead.
        exc = sys.exc_info()[1]
        _enqueue(_encode(f"leaderrun: could not format a log message {record.msg!r}: {exc!r}\n"))


class _QueueFile:
    """The file of rich's Console: what rich writes goes into the queue, not to fd 2."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding

    def write(self, text: str) -> int:
        if text:
            _enqueue(_encode(text))
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True  # only used when fd 2 is a terminal


def _new_console(console_class: type[Console] | None = None) -> Console:
    if console_class is None:
        from rich.console import Console

        console_class = Console
    return console_class(file=cast("IO[str]", _QueueFile(_encoding)))


def _make_rich_handler() -> RichHandler:
    from rich.logging import RichHandler

    handler = RichHandler(
        console=_new_console(),
        show_path=False,
        markup=False,
        log_time_format=f"[{TIME_FORMAT}]",
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def setup_logging(verbosity: int, log_format: str = "text", **context: Any) -> None:
    """Configure the root logger once, in the guard, before the worker is forked."""
    global GUARD_PID, _encoding, _notice_formatter, _rich_handler
    GUARD_PID = os.getpid()
    CONTEXT.clear()
    CONTEXT.update(context)
    _encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    text = logging.Formatter(
        f"%(asctime)s leaderrun[{GUARD_PID}] %(levelname)s %(message)s", TIME_FORMAT
    )
    handler: logging.Handler
    if log_format == "json":
        handler = NonBlockingHandler()
        handler.setFormatter(JsonFormatter())
        _notice_formatter = JsonFormatter()
        _rich_handler = None
    elif os.isatty(_STDERR_FD):
        handler = _rich_handler = _make_rich_handler()
        _notice_formatter = text
    else:
        handler = NonBlockingHandler()
        handler.setFormatter(text)
        _notice_formatter = text
        _rich_handler = None
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_for(verbosity))
    if verbosity < 2:
        # Client libraries are chatty at INFO; their news reaches the operator through ours.
        for noisy in ("pyetcd", "grpc", "kazoo"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
