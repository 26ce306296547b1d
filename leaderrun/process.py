"""The child's process tree: start it, signal all of it, know what is left of it — never wait.

leaderrun is a child subreaper (Linux PR_SET_CHILD_SUBREAPER): a process the child leaves behind,
even one that called setsid() or left the process group, is re-parented to leaderrun rather
than to init. So "every process of the term" is every process below us, and we can stop them
all before we release leadership — the property `etcdctl lock` and zk-flock lack.

Where the kernel allows it (cgroup v2 with `cgroup.kill`, Linux >= 5.14, and we may create a
cgroup) the child also starts alone in a cgroup of its own. Writing `cgroup.kill` SIGKILLs
every member at once, with no fork race and no permission check on the members, so a tree
that forks in a loop, or a process that changed user (sudo), still dies. Without a cgroup the
sweep over our descendants (/proc) does the work, repeated until nothing is left.

This module does not wait for anything: the supervisor and the guard drive it from a single
`selectors` loop. It sends signals, reports what is alive, and hands out pidfds that become
readable when a process exits, so the loop wakes on the event instead of polling. The only
bounded waits are in `spawn` (until the child has called exec, as subprocess does) and in
`kill_everything_now` (at most about a second, used only when the process is going away).

The guard process imports this module too and must stay light: standard library only, and
nothing costly at import time.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import NamedTuple

from leaderrun.errors import CommandNotExecutable, CommandNotFound, signal_exit_code

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36

#: Set to "off" (or 0/no/false) to never use a cgroup: the /proc sweep alone stops the tree.
CGROUP_ENV = "LEADERRUN_CGROUP"
_OFF_VALUES = frozenset({"off", "0", "no", "false"})

#: kill_everything_now gives up after this long (seconds) and reports the survivors.
KILL_NOW_WAIT = 1.0
_KILL_NOW_ROUNDS = 10



def become_subreaper() -> None:
    """Adopt every orphaned descendant, so none can escape the clean-up."""
    import ctypes  # only the processes that call this pay for ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def resolve_command(command: Sequence[str]) -> str:
    """Find COMMAND before campaigning, so a host that cannot run it never takes the lead."""
    name = command[0]
    if "/" in name:
        if not os.path.exists(name):
            raise CommandNotFound(f"command not found: {name}")
        if os.path.isdir(name) or not os.access(name, os.X_OK):
            raise CommandNotExecutable(f"command is not executable: {name} (chmod +x it?)")
        return name
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CommandNotFound(f"command not found in PATH: {name}")


# -- cgroup ----------------------------------------------------------------------------------


class Cgroup:
    """A cgroup v2 directory created for one term's child; None-able everywhere.

    It exists so that the whole term can be SIGKILLed atomically through `cgroup.kill`: no
    process forked while we sweep can slip through, and processes we may not signal (another
    user's, after sudo) die too. Everything that uses it has a fallback (the /proc sweep), so
    `create` returns None rather than fail: set ``LEADERRUN_CGROUP=off`` to force that
    fallback (tests use it; so can a host whose cgroup setup leaderrun should not touch).
    """

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"Cgroup({self.path!r})"

    @classmethod
    def create(cls, name: str) -> Cgroup | None:
        """Make ``<our own cgroup>/leaderrun-<name>`` on the writable cgroup2 mount.

        The mount is found through /proc/self/mountinfo, never assumed (hybrid layouts mount
        cgroup2 at /sys/fs/cgroup/unified, containers elsewhere). The cgroup is usable only if
        it has `cgroup.kill` (Linux >= 5.14), is a plain "domain" cgroup that may hold
        processes, and we may write `cgroup.procs` (of it and of our own cgroup: moving a
        process needs both). Otherwise, or when not root, read-only, without cgroup2, or with
        ``LEADERRUN_CGROUP=off``: None. Should the child's move still fail (the kernel's "no
        internal processes" rule, delegation), `spawn` notices and drops the cgroup.
        """
        if os.environ.get(CGROUP_ENV, "").strip().lower() in _OFF_VALUES:
            return None
        parent = _own_cgroup_dir()
        if parent is None:
            return None
        path = os.path.join(parent, "leaderrun-" + _safe_name(name))
        try:
            try:
                os.mkdir(path, 0o755)
            except FileExistsError:
                os.rmdir(path)  # a stale, empty one from an earlier run with the same name
                os.mkdir(path, 0o755)
        except OSError as exc:
            log.debug("no cgroup for the child (%s): %s", path, exc)
            return None
        cgroup = cls(path)
        if not cgroup._usable(parent):
            cgroup.remove()
            return None
        return cgroup

    def _usable(self, parent: str) -> bool:
        if not os.path.exists(os.path.join(self.path, "cgroup.kill")):
            log.debug("cgroup %s has no cgroup.kill (Linux < 5.14): not used", self.path)
            return False
        try:
            with open(os.path.join(self.path, "cgroup.type"), encoding="ascii") as f:
                kind = f.read().strip()
        except OSError:
            kind = "domain"
        return (
            kind == "domain"
            and os.access(os.path.join(self.path, "cgroup.procs"), os.W_OK)
            and os.access(os.path.join(parent, "cgroup.procs"), os.W_OK)
        )

    @property
    def procs_path(self) -> str:
        """The file a process is moved in through, and that lists the members."""
        return os.path.join(self.path, "cgroup.procs")

    def add(self, pid: int) -> None:
        """Move `pid` into this cgroup (OSError if the kernel refuses)."""
        _write(self.procs_path, str(pid).encode())

    def kill(self) -> bool:
        """SIGKILL every member at once (no fork race, no permission check on the members).

        False if the kernel refused the write; the caller still has the /proc sweep.
        """
        try:
            _write(os.path.join(self.path, "cgroup.kill"), b"1")
        except OSError as exc:
            log.warning("cannot write %s/cgroup.kill: %s", self.path, exc)
            return False
        return True

    def pids(self) -> list[int]:
        """The live members (zombies are not listed); [] once the cgroup is gone."""
        return _cgroup_pids(self.path)

    def remove(self) -> None:
        """Delete the (empty) cgroup. Still busy or already gone is not an error here: the
        caller tries again once the last member has exited."""
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                log.warning("cannot remove cgroup %s: %s", self.path, exc)


def _own_cgroup_dir() -> str | None:
    """Our own cgroup v2 directory on a writable cgroup2 mount, or None."""
    own = None
    try:
        with open("/proc/self/cgroup", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                if line.startswith("0::"):
                    own = line[3:].rstrip("\n")
                    break
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            mounts = f.read().splitlines()
    except OSError:
        return None
    if own is None or not own.startswith("/") or own.endswith(" (deleted)"):
        return None
    for line in mounts:
        left, sep, right = line.partition(" - ")
        after = right.split()
        fields = left.split()
        if not sep or len(after) < 3 or after[0] != "cgroup2" or len(fields) < 6:
            continue
        root, mount_point = _unescape(fields[3]), _unescape(fields[4])
        if "rw" not in fields[5].split(",") or "rw" not in after[2].split(","):
            continue
        if root == "/":
            relative = own
        elif own == root or own.startswith(root + "/"):
            relative = own[len(root) :]
        else:
            continue  # this mount does not show our cgroup
        directory = mount_point.rstrip("/") + relative.rstrip("/")
        if os.path.isdir(directory or "/"):
            return directory or "/"
    return None


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (a space is written as \\040)."""
    if "\\" not in field:
        return field
    import re

    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _safe_name(name: str) -> str:
    return "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in name)


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _cgroup_pids(path: str) -> list[int]:
    try:
        with open(os.path.join(path, "cgroup.procs"), "rb") as f:
            return [int(line) for line in f.read().split()]
    except OSError:
        return []


# -- the child -------------------------------------------------------------------------------


class Child:
    """The command of one term, leader of its own process group (and alone in its cgroup).

    `pidfd` becomes readable when the child exits, so the supervisor's loop wakes on it; its
    status is collected only by `exit_status` (nothing else in this module reaps it), and the
    unreaped zombie keeps the pid (and so the process group id) from being reused meanwhile.
    """

    __slots__ = ("_status", "cgroup", "pid", "pidfd")

    def __init__(self, pid: int, pidfd: int, cgroup: Cgroup | None) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.cgroup = cgroup
        self._status: int | None = None

    def __repr__(self) -> str:
        return f"Child(pid={self.pid}, status={self._status}, cgroup={self.cgroup!r})"

    @property
    def reaped(self) -> bool:
        """Its status is collected: the pid is free for reuse and must not be signalled."""
        return self._status is not None

    def exit_status(self) -> int | None:
        """The shell-style status (128+N for signal N), or None while it runs. Never blocks."""
        if self._status is not None:
            return self._status
        try:
            pid, wait_status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            log.error("the status of child pid %d was collected elsewhere", self.pid)
            self._status = 255
            return self._status
        if pid == 0:
            return None
        code = os.waitstatus_to_exitcode(wait_status)
        self._status = signal_exit_code(-code) if code < 0 else code
        return self._status

    def send_signal(self, signum: int) -> None:
        """Signal the child's whole process group, as a terminal would.

        A group that is gone is not an error; one we may not signal (the child changed user
        and we lack CAP_KILL) is logged: `signal_tree` reports such processes to the caller.
        """
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass
        except PermissionError:
            log.warning("not permitted to signal the process group of child pid %d", self.pid)

    def close(self) -> None:
        """Release the pidfd, and the cgroup once it is empty (else the caller retries
        `cgroup.remove()` later). Safe to call twice."""
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        if self.cgroup is not None and not self.cgroup.pids():
            self.cgroup.remove()


def spawn(command: Sequence[str], env: Mapping[str, str], cgroup: Cgroup | None) -> Child:
    """Start COMMAND directly (no shell) in its own process group, stdio inherited.

    With `os.posix_spawnp` (vfork underneath: ~0.2 ms, where fork() of the worker costs 4-10
    ms and runs gRPC's fork handlers), signal dispositions reset to default and an empty
    signal mask (the worker handles signals and has a wakeup fd; the command must see a
    default SIGTERM). Our own descriptors are close-on-exec (PEP 446), so none leaks.

    The child must already be in its cgroup when the command starts, else something it forks
    at once (`sudo` at the top of a job) could escape `cgroup.kill`; posix_spawn cannot place it
    there, so the spawning process steps into the term's cgroup for the spawn and back out
    right after (the child inherits the cgroup at birth). The kernel makes the first such move
    after a quiet while wait for an RCU grace period (10-20 ms measured here); moves in quick
    succession (a busy chain of jobs) cost ~0.1 ms. Nothing kills that cgroup while we are in
    it: the term's deadline is still ahead when it starts its child. If the move is refused,
    the command runs without the cgroup (logged; the returned Child's cgroup is None).
    """
    if not command:
        raise ValueError("empty command")
    try:
        path = _find_executable(command[0], env)
    except OSError as exc:
        if cgroup is not None:
            cgroup.remove()
        raise _exec_error(command[0], exc.errno or errno.ENOENT) from None
    _close_on_exec_above_stdio()
    cgroup, pid = _spawn_in(path, command, env, cgroup)
    return Child(pid, os.pidfd_open(pid), cgroup)


def _spawn_in(
    path: str, command: Sequence[str], env: Mapping[str, str], cgroup: Cgroup | None
) -> tuple[Cgroup | None, int]:
    """posix_spawn from inside `cgroup` (see `spawn`); the cgroup really used, and the pid."""
    own = _own_cgroup_dir() if cgroup is not None else None
    if cgroup is not None and (own is None or not _move_self(cgroup.path)):
        log.warning("cannot put the child in cgroup %s; stopping its tree without it", cgroup.path)
        cgroup.remove()
        cgroup = None
    catchable = [
        int(s) for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)
    ]
    try:
        pid = os.posix_spawn(
            path, list(command), dict(env), setpgroup=0, setsigmask=[], setsigdef=catchable
        )
    except OSError as exc:
        if cgroup is not None:
            _step_out(own, cgroup)
            cgroup.remove()  # once we are out of it: a cgroup with a member cannot go
        raise _exec_error(command[0], exc.errno or errno.EINVAL) from None
    if cgroup is not None:
        _step_out(own, cgroup)
    return cgroup, pid


def _step_out(own: str | None, cgroup: Cgroup) -> None:
    """Back into our own cgroup after spawning from inside the term's."""
    if own is not None and not _move_self(own):
        log.error("cannot move leaderrun back out of cgroup %s", cgroup.path)


def _close_on_exec_above_stdio() -> None:
    """Only stdin, stdout and stderr reach the command (as with subprocess's close_fds): a
    descriptor leaderrun inherited and left inheritable (a lock, a socket) is not passed on."""
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        if fd > 2:
            with contextlib.suppress(OSError):
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)


def _find_executable(name: str, env: Mapping[str, str]) -> str:
    """`name` as execvp would find it in the PATH of `env` (the child's, not ours)."""
    if os.path.dirname(name):
        return name
    found = errno.ENOENT
    for directory in os.get_exec_path(env):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            if os.access(path, os.X_OK):
                return path
            found = errno.EACCES
    raise OSError(found, os.strerror(found), name)


def _move_self(cgroup_dir: str) -> bool:
    """Move this process (all its threads) into `cgroup_dir`; False if the kernel refused."""
    try:
        _write(os.path.join(cgroup_dir, "cgroup.procs"), b"0")
    except OSError as exc:
        log.debug("cannot move into cgroup %s: %s", cgroup_dir, exc)
        return False
    return True


def _exec_error(name: str, err: int) -> Exception:
    """The same messages as when the child was started through subprocess."""
    if err in (errno.ENOENT, errno.ENOTDIR):
        return CommandNotFound(f"command not found: {name}")
    if err in (errno.EACCES, errno.EPERM):
        return CommandNotExecutable(f"command is not executable: {name}")
    if err == errno.ENOEXEC:
        return CommandNotExecutable(f"command is not executable: {name} (missing #! line?)")
    return OSError(err, os.strerror(err), name)


# -- the tree --------------------------------------------------------------------------------


class Sweep(NamedTuple):
    """What one round of signalling reached."""

    signalled: list[int]  # pids we signalled successfully
    refused: list[int]  # pids that refused (EPERM): cannot be killed by us


class _Stat(NamedTuple):
    ppid: int
    state: str
    pgrp: int


def _scan() -> dict[int, _Stat]:
    """{pid: (ppid, state, pgrp)} of every process, from /proc/<pid>/stat."""
    table: dict[int, _Stat] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # The command name (field 2) is in parentheses and may itself contain ") ".
        fields = stat[stat.rfind(b")") + 1 :].split()
        if len(fields) < 3:
            continue
        table[int(entry)] = _Stat(
            int(fields[1]), fields[0].decode("ascii", "replace"), int(fields[2])
        )
    return table


def _has_live_threads(pid: int) -> bool:
    """A zombie thread-group leader whose other threads still run is alive."""
    try:
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def live_tree(root_pid: int | None = None, exclude: Collection[int] = ()) -> list[int]:
    """Pids of every live (non-zombie) descendant of `root_pid` (default: us), from /proc.

    Zombies met on the way that are children of the calling process are reaped — orphans
    re-parented to us as subreaper — except those in `exclude`: the caller passes the pid of
    its unreaped Child there, whose status belongs to `Child.exit_status`. Pids in `exclude`
    are not listed, but their descendants are. Never blocks (waitpid with WNOHANG).
    """
    return list(_live_tree(os.getpid() if root_pid is None else root_pid, set(exclude)))


def _live_tree(root: int, skip: set[int]) -> dict[int, int]:
    """{pid: process group} of the live descendants of `root` (see `live_tree`)."""
    me = os.getpid()
    table = _scan()
    children: dict[int, list[int]] = {}
    for pid, stat in table.items():
        children.setdefault(stat.ppid, []).append(pid)
    alive: dict[int, int] = {}
    stack = [root]
    seen = {root}
    while stack:
        for pid in children.get(stack.pop(), ()):
            if pid in seen:
                continue
            seen.add(pid)
            stack.append(pid)
            if pid in skip or pid == me:
                continue
            stat = table[pid]
            if stat.state in ("Z", "X"):
                if stat.state == "Z" and stat.ppid == me and _reap(pid):
                    continue
                if not _has_live_threads(pid):
                    continue
            alive[pid] = stat.pgrp
    return alive


def leftovers(child: Child) -> list[int]:
    """What is left of the term once `child` has exited (and been reaped).

    In a cgroup that is its members (a process cannot leave a cgroup by itself), read from one
    file; else every live descendant, from a /proc scan. Exited orphans re-parented to us are
    reaped either way.

    An empty cgroup is confirmed by reaping again: a member that becomes a zombie between the
    first reaping and the read is listed by neither, and would outlive the release as an
    unreaped zombie whose pid still answers `kill -0` on the next leader's host. Once every
    member has left the cgroup, what is left of the term can only be our own children
    (orphans are re-parented to us); a child that is still on its way out (it leaves
    `cgroup.procs` before it is a zombie) is then found by the /proc scan. Usually no child is
    left at all, and the answer costs one more `waitpid`, not a scan.
    """
    cgroup = child.cgroup
    if cgroup is None or not child.reaped:
        return live_tree(exclude=() if child.reaped else (child.pid,))
    _reap_exited()
    members = cgroup.pids()
    if members:
        return members
    return live_tree() if _reap_exited() else []


def _reap_exited() -> bool:
    """Collect every child of ours that has exited; True if children remain (still running,
    or on their way out)."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        return False  # no child left at all
    return True


def _reap(pid: int) -> bool:
    """Collect a zombie child of ours; False if it is not reapable yet (live threads)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True  # someone else collected it: gone either way
    return done != 0


def signal_tree(child: Child | None, signum: int, exclude: Collection[int] = ()) -> Sweep:
    """Send `signum` to every process of the term: the child's process group (while the child
    runs), every live descendant of the calling process except `exclude`, the members of the
    child's cgroup and, for SIGKILL, the whole cgroup through `cgroup.kill` — which also kills
    what we may not signal ourselves (a child that changed user through sudo).

    Pids that refuse the signal (EPERM) are returned in `refused`, unless `cgroup.kill` took
    care of them: the caller must not release leadership while such a process lives.
    """
    skip = set(exclude)
    running = child is not None and child.exit_status() is None
    pgid = None
    extra: list[int] = []
    cgroup_path = None
    if child is not None:
        if not child.reaped:
            skip.add(child.pid)  # its status belongs to Child.exit_status
        if running and child.pid not in set(exclude):
            pgid = child.pid
            extra.append(child.pid)
        if child.cgroup is not None:
            cgroup_path = child.cgroup.path
    return _sweep(os.getpid(), pgid, extra, cgroup_path, signum, skip)


def signal_tree_of(
    root_pid: int, child_pgid: int | None, cgroup_path: str | None, signum: int
) -> Sweep:
    """For the guard (the worker's parent): send `signum` to the worker's child's process group,
    to every live descendant of the worker `root_pid` but not to the worker itself, to the
    members of the child's cgroup and, for SIGKILL, to the cgroup through `cgroup.kill`.

    The guard stops the tree at the deadline even if the worker is stalled; it must not kill
    the worker, which still has to release the lease. Never blocks.
    """
    return _sweep(root_pid, child_pgid, [], cgroup_path, signum, {root_pid})


def _sweep(
    root: int,
    pgid: int | None,
    extra: list[int],
    cgroup_path: str | None,
    signum: int,
    skip: set[int],
) -> Sweep:
    me = os.getpid()
    tree = _live_tree(root, skip)
    grouped: set[int] = set()
    if pgid is not None and pgid > 1 and pgid != os.getpgrp():
        # The group after the scan: this also reaches members forked since. Each process is
        # then signalled on its own as well, to learn which ones refuse (EPERM): killpg
        # succeeds as soon as one member accepts.
        try:
            os.killpg(pgid, signum)
            grouped = {pid for pid, group in tree.items() if group == pgid}
            grouped.update(extra)
        except (ProcessLookupError, PermissionError):
            pass
    targets = dict.fromkeys([*extra, *tree])
    members = _cgroup_pids(cgroup_path) if cgroup_path is not None else []
    targets.update(dict.fromkeys(p for p in members if p not in skip))
    targets.pop(me, None)
    targets.pop(root, None)
    signalled: list[int] = []
    refused: list[int] = []
    for pid in targets:
        try:
            # A member of the group already got `signum` from killpg: a second SIGTERM would
            # cut short a job's graceful shutdown (many treat it as "quit now"). Signal 0 only
            # asks whether we may signal it, which is what the per-pid pass is for.
            os.kill(pid, 0 if pid in grouped else signum)
        except ProcessLookupError:
            if pid in grouped:  # killed by killpg and already reaped
                signalled.append(pid)
            continue
        except PermissionError:
            refused.append(pid)
            continue
        signalled.append(pid)
    if cgroup_path is not None and signum == signal.SIGKILL:
        # Read the members again: whatever is in the cgroup now dies with this write,
        # including anything forked after the sweep above.
        members = _cgroup_pids(cgroup_path)
        if Cgroup(cgroup_path).kill():
            in_cgroup = set(members)
            killed = [p for p in refused if p in in_cgroup]
            refused = [p for p in refused if p not in in_cgroup]
            signalled.extend(p for p in [*killed, *members] if p not in signalled)
    return Sweep(signalled, refused)


def watch_fds(pids: Iterable[int]) -> dict[int, int]:
    """{pidfd: pid} for each pid still alive; each fd becomes readable when its process exits.

    The caller owns the fds and must close them (os.close) when done. Pids already gone are
    left out.
    """
    fds: dict[int, int] = {}
    for pid in pids:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            continue
    return fds


def kill_everything_now() -> list[int]:
    """SIGKILL every live descendant at once and reap them; return those still alive after
    about a second (uninterruptible sleep...). For a process that is going away: no time for
    grace. Waits on pidfds (poll), never sleeps; rounds repeat for what was forked meanwhile.
    """
    deadline = time.monotonic() + KILL_NOW_WAIT
    for _ in range(_KILL_NOW_ROUNDS):
        targets = live_tree()
        if not targets:
            return []
        for pid in targets:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                continue
        fds = watch_fds(targets)
        try:
            poller = select.poll()  # not select.select: pidfds may be above FD_SETSIZE
            for fd in fds:
                poller.register(fd, select.POLLIN)
            pending = len(fds)
            while pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                for fd, _ in poller.poll(remaining * 1000):
                    poller.unregister(fd)
                    pending -= 1
        finally:
            for fd in fds:
                os.close(fd)
        if time.monotonic() >= deadline:
            break
    return live_tree()
