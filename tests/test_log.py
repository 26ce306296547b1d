"""leaderrun's own log output never blocks the process that logs (SPEC §3 "Timing rule"), and
keeps the formats of SPEC §5.

Every test runs a real Python process that imports `leaderrun.log`, with stderr connected to a
pipe (or a pseudo-terminal) the test controls: a pipe nobody reads stands for a stalled log
collector. Tests await events (a process exits, a line arrives), never sleeps.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import pytest

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 20.0
LINES = 10_000

#: Logs LINES numbered INFO lines as fast as it can, then prints dropped_lines() on stdout.
FLOOD = """
import logging, os, sys
from leaderrun.log import dropped_lines, event, flush, setup_logging

setup_logging(1, sys.argv[1])
log = logging.getLogger("leaderrun")
for i in range({lines}):
    log.info("line %d %s", i, "x" * 60, extra=event("flood", n=i))
print(dropped_lines(), flush=True)
"""

NOTICE = re.compile(r"leaderrun: dropped (\d+) log lines \(stderr was blocked\)")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADERRUN_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["COLUMNS"] = "200"
    return env


def _script(tmp_path: Path, body: str, lines: int = LINES) -> Path:
    path = tmp_path / "script.py"
    path.write_text(FLOOD.format(lines=lines) + textwrap.dedent(body))
    return path


@contextlib.contextmanager
def _process(argv: list[str], **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess in its own session, killed with everything it forked when the test ends."""
    proc = subprocess.Popen(argv, env=_env(), cwd=REPO, start_new_session=True, **kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _readline(stream: IO[bytes], timeout: float = TIMEOUT) -> bytes:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(stream.readline).result(timeout=timeout)


def _pipe_capacity(fd: int) -> int:
    return int(fcntl.fcntl(fd, getattr(fcntl, "F_GETPIPE_SZ", 1032)))


def test_logging_to_a_stalled_stderr_never_blocks(tmp_path: Path) -> None:
    result = tmp_path / "result"
    script = _script(
        tmp_path,
        f"""
        with open({str(result)!r}, "w") as out:
            out.write(f"done {{dropped_lines()}}")
        flush(0)
        os._exit(0)
        """,
    )
    with _process(
        [sys.executable, str(script), "text"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stderr is not None
        started = time.monotonic()
        assert proc.wait(timeout=TIMEOUT) == 0, "logging to a pipe nobody reads blocked"
        elapsed = time.monotonic() - started
        done, dropped = result.read_text().split()
        assert done == "done"
        assert int(dropped) > 0
        capacity = _pipe_capacity(proc.stderr.fileno())
        output = proc.stderr.read()
    assert 0 < len(output) <= capacity
    # Whatever reached the pipe is whole lines, the first ones, in order.
    numbers = [int(m) for m in re.findall(rb"INFO line (\d+) x+\n", output)]
    assert numbers == list(range(len(numbers)))
    assert output.count(b"\n") == len(numbers)
    assert elapsed < TIMEOUT


def _check_stream(numbers_and_gaps: list[tuple[str, int]], total: int) -> int:
    """Each gap report sits exactly where its lines are missing; returns the lines reported."""
    expected, pending, reported = 0, 0, 0
    for kind, value in numbers_and_gaps:
        if kind == "gap":
            pending += value
            reported += value
        else:
            assert value == expected + pending, f"line {value} after a gap of {pending}"
            expected, pending = value + 1, 0
    assert expected == total
    return reported


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_dropped_lines_are_reported_when_stderr_flows_again(
    tmp_path: Path, log_format: str
) -> None:
    script = _script(
        tmp_path,
        f"""
        sys.stdin.readline()  # the test drains stderr, then lets us go on
        log.info("line %d after the gate", {LINES}, extra=event("flood", n={LINES}))
        written = flush({TIMEOUT})
        print(dropped_lines(), written, flush=True)
        os._exit(0)
        """,
    )
    with _process(
        [sys.executable, str(script), log_format],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        dropped = int(_readline(proc.stdout))
        assert dropped > 0
        chunks: list[bytes] = []
        all_reported = threading.Event()

        def drain(fd: int) -> None:
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
                seen = b"".join(chunks).decode(errors="replace")
                if sum(int(n) for n in NOTICE.findall(seen)) == dropped:
                    all_reported.set()

        reader = threading.Thread(target=drain, args=(proc.stderr.fileno(),), daemon=True)
        reader.start()
        # Output flows again: the drops are reported without anything more being logged.
        assert all_reported.wait(TIMEOUT), "the dropped lines were not reported"
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        final, written = _readline(proc.stdout).split()
        assert proc.wait(timeout=TIMEOUT) == 0
        reader.join(timeout=TIMEOUT)
    assert written == b"True", "the queue did not drain once stderr was read"
    assert int(final) == dropped, "lines dropped after the counter was read"
    lines = b"".join(chunks).decode().splitlines()
    stream: list[tuple[str, int]] = []
    for line in lines:
        if log_format == "json":
            document = json.loads(line)
            if document["event"] == "log_lines_dropped":
                assert document["level"] == "warning"
                assert NOTICE.fullmatch(document["message"])
                stream.append(("gap", document["dropped"]))
            else:
                assert document["event"] == "flood"
                stream.append(("line", document["n"]))
        else:
            notice = NOTICE.search(line)
            if notice:
                assert " WARNING " in line
                stream.append(("gap", int(notice.group(1))))
            else:
                number = re.fullmatch(r"\S+ \S+ leaderrun\[\d+\] INFO line (\d+) .*", line)
                assert number, line
                stream.append(("line", int(number.group(1))))
    assert stream[-1] == ("line", LINES), "the line logged after the drops is not last"
    assert stream[-2][0] == "gap", "the drops were not reported before the new line"
    assert _check_stream(stream, LINES + 1) == dropped


FORKS = """
import logging, os, sys, threading
from leaderrun import log as leaderrun_log

leaderrun_log.setup_logging(1)
log = logging.getLogger("leaderrun")
stop = threading.Event()


def chatter():
    while not stop.is_set():
        log.info("parent chatter")


def fork_and_log(name):
    pid = os.fork()
    if pid == 0:
        log.warning("child %s says hello", name)
        os._exit(0 if leaderrun_log.flush(10) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, name


threads = [threading.Thread(target=chatter, daemon=True) for _ in range(2)]
for thread in threads:
    thread.start()
for n in range(20):
    fork_and_log(n)
stop.set()
for thread in threads:
    thread.join()

# Fork while another thread holds the queue's lock: the child must not inherit it held.
held, release = threading.Event(), threading.Event()


def holder():
    with leaderrun_log._current().lock:
        held.set()
        release.wait()


holding = threading.Thread(target=holder, daemon=True)
holding.start()
held.wait()
fork_and_log("held")
release.set()
holding.join()
log.warning("parent done")
os._exit(0 if leaderrun_log.flush(10) else 1)
"""


def test_forked_child_logs_while_parent_threads_log(tmp_path: Path) -> None:
    script = tmp_path / "forks.py"
    script.write_text(FORKS)
    with _process(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        try:
            _, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail("a forked child (or its parent) deadlocked in logging")
        assert proc.returncode == 0, err.decode()[-2000:]
    output = err.decode()
    for name in [*map(str, range(20)), "held"]:
        assert f"WARNING child {name} says hello\n" in output
    assert output.endswith("WARNING parent done\n")


def test_import_does_not_load_rich() -> None:
    code = (
        "import sys, leaderrun.log as l\n"
        "assert 'rich' not in sys.modules, 'import'\n"
        "l.setup_logging(1)\n"
        "l.setup_logging(1, 'json')\n"
        "assert 'rich' not in sys.modules, 'setup_logging without a terminal'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr.decode()


def test_json_format_carries_the_event_fields(tmp_path: Path) -> None:
    code = (
        "import logging, os\n"
        "from leaderrun.log import event, flush, setup_logging\n"
        "setup_logging(1, 'json', election='nightly', identity='host-a')\n"
        "log = logging.getLogger('leaderrun.supervisor')\n"
        "log.info('elected with token %d', 5, extra=event('elected', token=5))\n"
        "logging.getLogger('kazoo.client').info('chatty')\n"
        "logging.getLogger('kazoo.client').warning('lost')\n"
        "os._exit(0 if flush(10) else 1)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr.decode()
    documents = [json.loads(line) for line in done.stderr.decode().splitlines()]
    assert len(documents) == 2, documents  # kazoo's INFO is demoted below -vv
    elected, lost = documents
    assert elected["event"] == "elected"
    assert elected["token"] == 5
    assert elected["level"] == "info"
    assert elected["message"] == "elected with token 5"
    assert elected["election"] == "nightly"
    assert elected["identity"] == "host-a"
    assert "logger" not in elected
    assert lost["logger"] == "kazoo.client"
    assert lost["event"] == "log"


def test_terminal_output_goes_through_rich_without_blocking(tmp_path: Path) -> None:
    code = (
        "import logging, os, sys\n"
        "from leaderrun.log import flush, setup_logging\n"
        "setup_logging(1)\n"
        "assert 'rich' in sys.modules\n"
        "logging.getLogger('leaderrun').info('hello from rich')\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    logging.getLogger('leaderrun').info('hello from the child')\n"
        "    os._exit(0 if flush(10) else 1)\n"
        "assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0\n"
        "os._exit(0 if flush(10) else 1)\n"
    )
    master, slave = pty.openpty()
    try:
        with _process([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=slave) as proc:
            os.close(slave)
            slave = -1
            output = b""
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], deadline - time.monotonic())
                if not ready:
                    break
                try:
                    chunk = os.read(master, 65536)
                except OSError as exc:  # EIO: the terminal's other side is closed
                    assert exc.errno == errno.EIO
                    break
                if not chunk:
                    break
                output += chunk
            assert proc.wait(timeout=TIMEOUT) == 0, output.decode(errors="replace")
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert b"hello from rich" in output
    assert b"hello from the child" in output
    assert b"INFO" in output
