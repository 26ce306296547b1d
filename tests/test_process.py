"""leaderrun.process with real processes: spawning, signal hygiene, cgroups, the /proc sweep.

Scenarios that change process-wide state (subreaper, ignored signals, a wakeup fd, dropped
capabilities) run in a small helper Python process written to tmp_path; it reports through a
JSON state file and, where the test has to act in the middle, waits until the test closes its
stdin. Everything started here is killed and reaped at teardown, pass or fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from helpers import clean_env, descendants, wait_for

from leaderrun import process
from leaderrun.errors import CommandNotExecutable, CommandNotFound

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux process model")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (cgroups, setpriv)")


# -- small probes ----------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Exists and is not a zombie."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def dead(pid: int) -> bool:
    return not alive(pid)


def exited(child: process.Child) -> bool:
    return child.exit_status() is not None


def empty(cgroup: process.Cgroup) -> bool:
    return not cgroup.pids()


def session_members(sid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(entry))
    return found


def wait_readable(fd: int, timeout: float = 10.0) -> bool:
    ready, _, _ = select.select([fd], [], [], timeout)
    return bool(ready)


def cgroup_kill_supported() -> bool:
    """Is there a cgroup2 mount at all on a kernel that has cgroup.kill (>= 5.14)?"""
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    if (major, minor) < (5, 14):
        return False
    with open("/proc/self/mountinfo") as f:
        return any(line.partition(" - ")[2].startswith("cgroup2 ") for line in f)


def require(cg: process.Cgroup | None) -> process.Cgroup:
    """A cgroup must be usable wherever the kernel offers cgroup.kill: None there is a bug."""
    if cg is None:
        if not cgroup_kill_supported():
            pytest.skip("no cgroup2 mount or kernel < 5.14: cgroup.kill is absent")
        pytest.fail("Cgroup.create returned None although cgroup2 with cgroup.kill is available")
    return cg


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def spawned() -> Iterator[Callable[..., process.Child]]:
    """process.spawn for this test; every child's group and cgroup killed, reaped at the end."""
    children: list[process.Child] = []

    def start(
        command: Sequence[str],
        env: dict[str, str] | None = None,
        cgroup: process.Cgroup | None = None,
    ) -> process.Child:
        child = process.spawn(command, clean_env() if env is None else env, cgroup)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.cgroup is not None:
            child.cgroup.kill()
        if not child.reaped:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            wait_for(partial(exited, child), 10, message="child reaped")
        child.close()
        if child.cgroup is not None:
            cg = child.cgroup
            wait_for(partial(empty, cg), 10, message="cgroup empty")
            cg.remove()


@pytest.fixture
def cgroups() -> Iterator[Callable[[str], process.Cgroup | None]]:
    """Cgroup.create for this test; each one emptied and removed at the end."""
    made: list[process.Cgroup] = []

    def create(name: str) -> process.Cgroup | None:
        cg = process.Cgroup.create(f"test-{os.getpid()}-{name}")
        if cg is not None:
            made.append(cg)
        return cg

    yield create
    for cg in made:
        if not os.path.exists(cg.path):
            continue  # removed by the test
        cg.kill()
        wait_for(partial(empty, cg), 10, message="cgroup empty")
        cg.remove()
        assert not os.path.exists(cg.path)


PRELUDE = """\
import json, os, select, signal, sys, time
from leaderrun import process

STATE = sys.argv[1]
_state = {}

def report(**kw):
    _state.update(kw)
    with open(STATE + ".tmp", "w") as f:
        json.dump(_state, f)
    os.replace(STATE + ".tmp", STATE)

def wait_exit(fd, timeout=10.0):
    ready, _, _ = select.select([fd], [], [], timeout)
    assert ready, "no exit within %ss" % timeout

def wait_until(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.02)

def uid_of(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:
        return None

def wait_stdin_closed():
    sys.stdin.read()
"""


class Helper:
    """One helper Python process (its own session) and the state it reported."""

    def __init__(self, proc: subprocess.Popen[bytes], state: Path, err: Path) -> None:
        self.proc = proc
        self.state_path = state
        self.err_path = err

    def state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_path.read_text()))
        except (OSError, ValueError):
            return {}

    def wait_state(self, key: str, timeout: float = 10.0) -> dict[str, Any]:
        def reported() -> dict[str, Any]:
            if self.proc.poll() is not None and key not in self.state():
                raise AssertionError(f"helper exited early:\n{self.err_path.read_text()}")
            state = self.state()
            return state if key in state else {}

        return wait_for(reported, timeout, message=f"helper to report {key!r}")

    def finish(self, timeout: float = 15.0) -> dict[str, Any]:
        """Let it go on (stdin closed), await its exit, return its final state."""
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        code = self.proc.wait(timeout)
        assert code == 0, f"helper failed ({code}):\n{self.err_path.read_text()}"
        return self.state()


@pytest.fixture
def helper(tmp_path: Path) -> Iterator[Callable[..., Helper]]:
    """Start helper scripts; at teardown kill each one's session and the pids it reported
    under "leak" (escapees that left the session), then reap it."""
    started: list[Helper] = []

    def start(body: str, env: dict[str, str] | None = None, prefix: Sequence[str] = ()) -> Helper:
        n = len(started)
        script = tmp_path / f"helper{n}.py"
        script.write_text(PRELUDE + textwrap.dedent(body))
        state = tmp_path / f"helper{n}.json"
        err = tmp_path / f"helper{n}.err"
        with err.open("wb") as err_file:
            proc = subprocess.Popen(
                [*prefix, sys.executable, str(script), str(state)],
                stdin=subprocess.PIPE,
                stdout=err_file,
                stderr=subprocess.STDOUT,
                env=clean_env(env, PYTHONPATH=str(REPO)),
                start_new_session=True,
            )
        h = Helper(proc, state, err)
        started.append(h)
        return h

    yield start
    for h in started:
        leaks = [int(p) for p in h.state().get("leak", [])]
        for pid in [*session_members(h.proc.pid), *leaks]:
            if pid != h.proc.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if h.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                h.proc.stdin.close()
        try:
            h.proc.wait(10)
        except subprocess.TimeoutExpired:
            h.proc.kill()
            h.proc.wait(10)
        for pid in leaks:
            wait_for(partial(dead, pid), 10, message=f"pid {pid} gone")


# -- 1. spawn --------------------------------------------------------------------------------


def test_spawn_own_process_group_env_and_inherited_stdio(
    spawned: Callable[..., process.Child], capfd: pytest.CaptureFixture[str]
) -> None:
    env = {"PATH": os.environ.get("PATH", os.defpath), "LR_TEST_VAR": "hello world"}
    child = spawned(
        ["sh", "-c", 'echo "out:$LR_TEST_VAR:${HOME-unset}"; echo "err:$$" >&2; exit 7'], env
    )
    assert wait_readable(child.pidfd)
    assert child.exit_status() == 7
    assert child.exit_status() == 7  # cached once reaped
    assert child.reaped
    out, err = capfd.readouterr()
    assert "out:hello world:unset" in out  # exactly the env we gave
    assert f"err:{child.pid}" in err

    sleeper = spawned(["sleep", "100"])
    assert os.getpgid(sleeper.pid) == sleeper.pid  # leader of its own group
    assert os.getpgid(sleeper.pid) != os.getpgrp()
    assert os.getsid(sleeper.pid) == os.getsid(0)  # but no new session
    assert sleeper.exit_status() is None
    sleeper.send_signal(signal.SIGTERM)
    assert wait_readable(sleeper.pidfd)
    assert sleeper.exit_status() == 128 + signal.SIGTERM


def test_spawn_searches_path_of_given_env(
    spawned: Callable[..., process.Child], tmp_path: Path
) -> None:
    tool = tmp_path / "bin" / "lr-test-tool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\nexit 5\n")
    tool.chmod(0o755)
    child = spawned(["lr-test-tool"], {"PATH": f"/nonexistent:{tool.parent}"})
    assert wait_readable(child.pidfd)
    assert child.exit_status() == 5


def test_exec_errors(tmp_path: Path, spawned: Callable[..., process.Child]) -> None:
    env = clean_env()
    before = set(descendants(os.getpid()))  # the suite's own servers, among others
    with pytest.raises(CommandNotFound) as not_found:
        spawned([str(tmp_path / "missing")], env)
    assert not_found.value.exit_code == 127
    assert str(not_found.value) == f"command not found: {tmp_path / 'missing'}"

    with pytest.raises(CommandNotFound) as not_in_path:
        spawned(["lr-no-such-command-anywhere"], env)
    assert not_in_path.value.exit_code == 127

    plain = tmp_path / "plain.txt"
    plain.write_text("data\n")
    with pytest.raises(CommandNotExecutable) as no_x:
        spawned([str(plain)], env)
    assert no_x.value.exit_code == 126
    assert str(no_x.value) == f"command is not executable: {plain}"

    with pytest.raises(CommandNotExecutable):
        spawned([str(tmp_path)], env)  # a directory

    script = tmp_path / "noshebang"
    script.write_bytes(b"\x00\x01\x02 not a program\n")
    script.chmod(0o755)
    with pytest.raises(CommandNotExecutable) as no_shebang:
        spawned([str(script)], env)
    assert no_shebang.value.exit_code == 126
    assert str(no_shebang.value) == f"command is not executable: {script} (missing #! line?)"
    assert set(descendants(os.getpid())) <= before, "a failed exec left a process behind"


# -- 2. signal dispositions, mask and fds are reset in the child ----------------------------


def test_child_gets_default_signals_and_no_fds(helper: Callable[..., Helper]) -> None:
    h = helper(
        """
        import socket
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, lambda *a: None)
        r, w = socket.socketpair()
        w.setblocking(False)
        signal.set_wakeup_fd(w.fileno())
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2, signal.SIGHUP})
        os.dup2(r.fileno(), 50, inheritable=True)
        env = dict(os.environ)

        child = process.spawn(["sh", "-c", "kill -TERM $$; sleep 5"], env, None)
        wait_exit(child.pidfd)
        status = child.exit_status()
        child.close()

        sig_file, fd_file = sys.argv[1] + ".sig", sys.argv[1] + ".fds"
        probe = process.spawn(
            ["sh", "-c", 'grep -E "^Sig(Blk|Ign)" /proc/self/status > "$1"; '
             'ls /proc/self/fd > "$2"', "sh", sig_file, fd_file], env, None)
        wait_exit(probe.pidfd)
        assert probe.exit_status() == 0
        probe.close()
        report(
            status=status,
            sig=open(sig_file).read(),
            fds=open(fd_file).read().split(),
            parent_term=signal.getsignal(signal.SIGTERM) == signal.SIG_IGN,
            parent_mask=sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
            parent_wakeup=signal.set_wakeup_fd(-1) == w.fileno(),
        )
        """
    )
    state = h.finish()
    assert state["status"] == 128 + signal.SIGTERM  # 143: SIGTERM was not ignored
    sig = dict(line.split(":") for line in state["sig"].splitlines())
    assert int(sig["SigBlk"], 16) == 0, state["sig"]
    # Signals 32 and 33 are glibc's own (thread cancellation, setxid): its posix_spawn leaves
    # them ignored in the child, and glibc in the command installs its handlers over that.
    glibc_internal = (1 << 31) | (1 << 32)
    assert int(sig["SigIgn"], 16) & ~glibc_internal == 0, state["sig"]
    # grep's stdout is the file; ls has 0-2 and its directory fd; no fd 50, no wakeup fd.
    assert set(state["fds"]) <= {"0", "1", "2", "3"}, state["fds"]
    # ... and the parent's own signal state is untouched.
    assert state["parent_term"]
    assert state["parent_mask"] == sorted([signal.SIGHUP, signal.SIGUSR2])
    assert state["parent_wakeup"]


def sweep_only(child: process.Child) -> process.Sweep:
    """SIGKILL the child's tree from the test process, sparing the test's other descendants
    (the suite's shared etcd and ZooKeeper servers are children of pytest too)."""
    mine = {child.pid, *descendants(child.pid)}
    others = [pid for pid in descendants(os.getpid()) if pid not in mine]
    return process.signal_tree(child, signal.SIGKILL, exclude=others)


# -- 3. cgroup -------------------------------------------------------------------------------


def test_cgroup_off_by_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADERRUN_CGROUP", "off")
    assert process.Cgroup.create(f"test-{os.getpid()}-off") is None


@needs_root
def test_cgroup_kill_defeats_fork_loop(
    spawned: Callable[..., process.Child], cgroups: Callable[[str], process.Cgroup | None]
) -> None:
    cg = require(cgroups("forkloop"))
    assert os.path.isfile(os.path.join(cg.path, "cgroup.kill"))
    assert os.path.basename(cg.path).startswith("leaderrun-test-")
    with open("/proc/self/cgroup") as f:
        own = next(line[3:].strip() for line in f if line.startswith("0::"))
    assert cg.path.endswith(os.path.join(own, os.path.basename(cg.path)).replace("//", "/"))

    child = spawned(["sh", "-c", "while :; do sleep 10 & done"], cgroup=cg)
    assert child.cgroup is cg
    wait_for(lambda: child.pid in cg.pids(), 5, message="the child to join its cgroup")
    wait_for(lambda: len(cg.pids()) >= 10, 10, message="the loop to fork")

    sweep = sweep_only(child)
    assert child.pid in sweep.signalled
    assert sweep.refused == []
    wait_for(lambda: not cg.pids(), 10, message="cgroup.kill to empty the cgroup")
    assert wait_readable(child.pidfd)
    assert child.exit_status() == 128 + signal.SIGKILL
    # Nothing forked after the kill: the cgroup stays empty.
    assert cg.pids() == []
    child.close()
    assert not os.path.exists(cg.path), "close() removes the empty cgroup"


@needs_root
def test_spawn_falls_back_when_the_move_fails(
    spawned: Callable[..., process.Child], cgroups: Callable[[str], process.Cgroup | None]
) -> None:
    cg = require(cgroups("vanished"))
    os.rmdir(cg.path)  # the child's write to cgroup.procs fails now
    child = spawned(["sleep", "100"], cgroup=cg)
    wait_for(lambda: child.cgroup is None, 5, message="the cgroup dropped: the child cannot join")
    assert child.exit_status() is None
    sweep = sweep_only(child)
    assert sweep.signalled == [child.pid]
    assert wait_readable(child.pidfd)
    assert child.exit_status() == 128 + signal.SIGKILL


@needs_root
def test_cgroup_nests_under_our_own_cgroup(helper: Callable[..., Helper]) -> None:
    """Our cgroup is not the root one: the term's cgroup goes below it, found via mountinfo."""
    top = process._own_cgroup_dir()
    if top is None or not cgroup_kill_supported():
        pytest.skip("no cgroup2 mount or kernel < 5.14: cgroup.kill is absent")
    own = top + f"/leaderrun-test-nest-{os.getpid()}"
    os.mkdir(own)
    try:
        h = helper(
            f"""
            with open({own + "/cgroup.procs"!r}, "w") as f:
                f.write("0")
            cgroup = process.Cgroup.create("inner")
            assert cgroup is not None
            child = process.spawn(["sleep", "100"], dict(os.environ), cgroup)
            wait_until(lambda: child.pid in cgroup.pids(), what="the child in its cgroup")
            with open("/proc/%d/cgroup" % child.pid) as f:
                membership = [l.strip() for l in f if l.startswith("0::")]
            members = cgroup.pids()
            sweep = process.signal_tree(child, signal.SIGKILL)
            wait_exit(child.pidfd)
            report(path=cgroup.path, membership=membership, members=members,
                   child=child.pid, status=child.exit_status(), refused=sweep.refused)
            child.close()
            report(removed=not os.path.exists(cgroup.path))
            """
        )
        state = h.finish()
    finally:
        wait_for(lambda: not process._cgroup_pids(own), 10, message="nest cgroup empty")
        os.rmdir(own)
    relative = own[len(top) :] if top != "/" else own
    with open("/proc/self/cgroup") as f:
        mine = next(line[3:].strip() for line in f if line.startswith("0::"))
    assert state["path"] == own + "/leaderrun-inner"
    expected = (mine.rstrip("/") + relative + "/leaderrun-inner").replace("//", "/")
    assert state["membership"] == [f"0::{expected}"]
    assert state["members"] == [state["child"]]
    assert state["status"] == 128 + signal.SIGKILL
    assert state["refused"] == []
    assert state["removed"]


@needs_root
def test_leftovers_reaps_a_member_that_died_after_the_reaping(
    helper: Callable[..., Helper],
) -> None:
    """A leftover that turns zombie between leftovers()'s reaping and its cgroup read is in
    neither: it must still be reaped before leftovers() answers "nothing left", or its pid
    outlives the release (`kill -0` answers on the next leader's host). The race is forced by
    hiding the zombie from the first blanket reaping, as if it died just after it."""
    if not cgroup_kill_supported():
        pytest.skip("no cgroup2 mount or kernel < 5.14: cgroup.kill is absent")
    h = helper(
        """
        process.become_subreaper()
        cgroup = process.Cgroup.create("late-zombie")
        assert cgroup is not None
        child = process.spawn(["sh", "-c", "sleep 100 & exit 0"], dict(os.environ), cgroup)
        wait_exit(child.pidfd)
        child.exit_status()
        leftover = wait_until(lambda: cgroup.pids(), what="the orphaned sleep")[0]
        report(leak=[leftover])
        watch = process.watch_fds([leftover])
        os.kill(leftover, signal.SIGKILL)
        wait_exit(next(iter(watch)))  # a zombie now, our child (subreaper), not reaped
        real_waitpid = os.waitpid
        hidden = [True]
        def waitpid(pid, options):
            if pid == -1 and hidden[0]:
                hidden[0] = False
                raise ChildProcessError  # as if it died just after this reaping
            return real_waitpid(pid, options)
        os.waitpid = waitpid
        left = process.leftovers(child)
        os.waitpid = real_waitpid
        report(left=left, pid_exists=os.path.exists("/proc/%d" % leftover))
        child.close()
        """
    )
    state = h.finish()
    assert state["left"] == []
    assert not state["pid_exists"], "the zombie leftover was left unreaped"


# -- 4. fallback: the /proc sweep as subreaper ------------------------------------------------


def test_fallback_sweep_finds_and_kills_setsid_escapees(helper: Callable[..., Helper]) -> None:
    h = helper(
        """
        process.become_subreaper()
        assert process.Cgroup.create("fallback") is None
        me = os.getpid()
        child = process.spawn(
            ["sh", "-c", "setsid sleep 100 & setsid sh -c 'while :; do sleep 100 & done' &"
             " echo $! > " + STATE + ".loop; exit 0"],
            dict(os.environ), None)
        wait_exit(child.pidfd)
        status = child.exit_status()
        escapees = wait_until(lambda: len(process.live_tree()) >= 3 and process.live_tree(),
                              what="escapees")
        report(leak=escapees)
        sids = {os.getsid(p) for p in escapees if os.path.exists("/proc/%d" % p)}
        loop = int(open(STATE + ".loop").read())
        sweeps = []
        def swept():
            sweeps.append(process.signal_tree(child, signal.SIGKILL))
            return not process.live_tree()
        wait_until(swept, what="sweeps to empty the tree")
        report(
            status=status,
            escapees=escapees,
            loop=loop,
            adopted=loop in escapees,
            other_session=os.getsid(0) not in sids,
            sweeps=len(sweeps),
            signalled=sorted({p for s in sweeps for p in s.signalled}),
            refused=[p for s in sweeps for p in s.refused],
            left=[p for p in escapees if os.path.exists("/proc/%d" % p)],
        )
        """,
        env={"LEADERRUN_CGROUP": "off"},
    )
    state = h.finish()
    assert state["status"] == 0
    assert state["adopted"], "the setsid escapee was not re-parented to the subreaper"
    assert state["other_session"]
    assert state["sweeps"] >= 1
    assert set(state["escapees"]) <= set(state["signalled"])
    assert state["refused"] == []
    assert state["left"] == [], "killed escapees must be reaped by live_tree"


def test_kill_everything_now(helper: Callable[..., Helper]) -> None:
    h = helper(
        """
        process.become_subreaper()
        child = process.spawn(
            ["sh", "-c", "setsid sleep 100 & sleep 100 & trap '' TERM; wait"],
            dict(os.environ), None)
        tree = wait_until(lambda: len(process.live_tree()) >= 3 and process.live_tree(),
                          what="the tree")
        report(leak=tree)
        t0 = time.monotonic()
        survivors = process.kill_everything_now()
        report(survivors=survivors, took=time.monotonic() - t0, after=process.live_tree(),
               remaining=[p for p in tree if os.path.exists("/proc/%d" % p)])
        """,
        env={"LEADERRUN_CGROUP": "off"},
    )
    state = h.finish()
    assert state["survivors"] == []
    assert state["after"] == []
    assert state["remaining"] == [], "kill_everything_now reaps what it killed"
    assert state["took"] < 1.5


# -- 5. EPERM: a child that changed user, seen by a root without CAP_KILL --------------------

NO_CAP_KILL = ("setpriv", "--bounding-set", "-kill", "--inh-caps", "-kill", "--")

EPERM_BODY = """
with open("/proc/self/status") as f:
    cap_eff = int(next(l.split()[1] for l in f if l.startswith("CapEff:")), 16)
assert os.geteuid() == 0 and not cap_eff & (1 << 5), "CAP_KILL should be gone"
cgroup = process.Cgroup.create("eperm-%d" % os.getpid()) if USE_CGROUP else None
assert (cgroup is not None) == USE_CGROUP
child = process.spawn(
    ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "100"],
    dict(os.environ), cgroup)
report(child=child.pid, leak=[child.pid])
wait_until(lambda: uid_of(child.pid) == 65534, what="the child to change user")
sweep = process.signal_tree(child, signal.SIGKILL)
if USE_CGROUP:
    wait_exit(child.pidfd)
status = child.exit_status()
report(signalled=sweep.signalled, refused=sweep.refused, status=status,
       in_cgroup=cgroup is not None and child.pid in sweep.signalled)
if not USE_CGROUP:
    wait_stdin_closed()  # the test (full root) kills the sleeper now
    wait_exit(child.pidfd)
    report(final=child.exit_status())
child.close()
if cgroup is not None:
    wait_until(lambda: not cgroup.pids(), what="empty cgroup")
    cgroup.remove()
    report(removed=not os.path.exists(cgroup.path))
"""


@needs_root
def test_eperm_is_reported_as_refused(helper: Callable[..., Helper]) -> None:
    h = helper("USE_CGROUP = False\n" + EPERM_BODY, prefix=NO_CAP_KILL)
    state = h.wait_state("refused")
    pid = state["child"]
    assert state["refused"] == [pid]
    assert pid not in state["signalled"]
    assert state["status"] is None
    assert alive(pid), "the sleeper should have survived the SIGKILL it was not permitted"
    os.kill(pid, signal.SIGKILL)  # we are full root
    final = h.finish()
    assert final["final"] == 128 + signal.SIGKILL


@needs_root
def test_cgroup_kill_needs_no_cap_kill(
    helper: Callable[..., Helper],
) -> None:
    if not cgroup_kill_supported():
        pytest.skip("no cgroup2 mount or kernel < 5.14: cgroup.kill is absent")
    h = helper("USE_CGROUP = True\n" + EPERM_BODY, prefix=NO_CAP_KILL)
    state = h.finish()
    assert state["refused"] == [], "cgroup.kill took care of the process we may not signal"
    assert state["in_cgroup"]
    assert state["status"] == 128 + signal.SIGKILL
    assert state["removed"]


# -- 6. watch_fds ----------------------------------------------------------------------------


def test_watch_fds_become_readable_on_exit(spawned: Callable[..., process.Child]) -> None:
    gone = spawned(["true"])
    assert wait_readable(gone.pidfd)
    assert gone.exit_status() == 0
    sleeper = spawned(["sleep", "100"])
    fds = process.watch_fds([sleeper.pid, gone.pid])
    try:
        assert list(fds.values()) == [sleeper.pid], "a reaped pid gets no pidfd"
        (fd,) = fds
        assert not wait_readable(fd, 0)
        sleeper.send_signal(signal.SIGKILL)
        assert wait_readable(fd, 10)
    finally:
        for fd in fds:
            os.close(fd)
    assert sleeper.exit_status() == 128 + signal.SIGKILL
    sleeper.send_signal(signal.SIGTERM)  # reaped and gone: no error


# -- 7. the guard's signal_tree_of -----------------------------------------------------------

WORKER_BODY = """
process.become_subreaper()
cgroup = process.Cgroup.create("worker-%d" % os.getpid()) if USE_CGROUP else None
assert (cgroup is not None) == USE_CGROUP
child = process.spawn(["sh", "-c", "sleep 100 & setsid sleep 100 & wait"], dict(os.environ),
                      cgroup)
tree = wait_until(lambda: len(process.live_tree(exclude=[child.pid])) >= 2
                  and process.live_tree(exclude=[child.pid]), what="grandchildren")
report(child=child.pid, grandchildren=tree, leak=tree,
       cgroup=cgroup.path if cgroup is not None else None)
wait_stdin_closed()  # the test plays the guard now
wait_exit(child.pidfd)
status = child.exit_status()
child.close()
report(status=status, left=process.kill_everything_now())
if cgroup is not None:
    wait_until(lambda: not cgroup.pids(), what="empty cgroup")
    cgroup.remove()
"""


@pytest.mark.parametrize("via", ["pgid", "cgroup"])
def test_signal_tree_of_spares_the_worker(helper: Callable[..., Helper], via: str) -> None:
    if via == "cgroup" and (os.geteuid() != 0 or not cgroup_kill_supported()):
        pytest.skip("cgroup.kill needs root and cgroup2 on Linux >= 5.14")
    h = helper(f"USE_CGROUP = {via == 'cgroup'}\n" + WORKER_BODY)
    state = h.wait_state("grandchildren")
    worker, child, grandchildren = h.proc.pid, state["child"], state["grandchildren"]
    tree = [child, *grandchildren]
    assert all(alive(pid) for pid in tree)
    if via == "pgid":
        sweep = process.signal_tree_of(worker, child, None, signal.SIGKILL)
    else:
        sweep = process.signal_tree_of(worker, None, state["cgroup"], signal.SIGKILL)
    assert set(tree) <= set(sweep.signalled)
    assert worker not in sweep.signalled
    assert sweep.refused == []
    for pid in tree:
        wait_for(partial(dead, pid), 10, message=f"pid {pid} killed")
    assert h.proc.poll() is None and alive(worker), "the worker must survive"
    final = h.finish()
    assert final["status"] == 128 + signal.SIGKILL
    assert final["left"] == []


def test_signal_tree_of_sigterm(helper: Callable[..., Helper]) -> None:
    h = helper("USE_CGROUP = False\n" + WORKER_BODY, env={"LEADERRUN_CGROUP": "off"})
    state = h.wait_state("grandchildren")
    worker, child = h.proc.pid, state["child"]
    sweep = process.signal_tree_of(worker, child, None, signal.SIGTERM)
    assert {child, *state["grandchildren"]} <= set(sweep.signalled)
    for pid in [child, *state["grandchildren"]]:
        wait_for(partial(dead, pid), 10, message=f"pid {pid} terminated")
    assert alive(worker)
    assert h.finish()["status"] == 128 + signal.SIGTERM

