"""Real etcd and ZooKeeper servers for the tests: single servers and small clusters on loopback.

No mocks: leaderrun's safety property is about what a real server does with leases and
sessions, so the tests start real ``etcd`` and ZooKeeper (``QuorumPeerMain`` from Debian's
``zookeeper`` package) processes, each with its own ports and a data directory under a
temporary directory that pytest owns. Every process started here is also remembered in a
module-level registry and killed at interpreter exit (and dies with its parent through
``PR_SET_PDEATHSIG``), so a crashed or interrupted test run leaves no server behind.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from helpers import wait_for

ETCD_BIN = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL_BIN = shutil.which("etcdctl") or "/usr/bin/etcdctl"

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

# etcd 3.4 refuses to start on architectures other than amd64/ppc64le unless this variable
# names the Go architecture it runs on.
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}
_SUPPORTED_GOARCH = {"amd64", "ppc64le"}

_PR_SET_PDEATHSIG = 1
# Loopback health checks must never go through an http_proxy from the environment.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_handed_out_ports: set[int] = set()
_live: set[subprocess.Popen[bytes]] = set()


def _port_range() -> tuple[int, int]:
    """The kernel's ephemeral port range (``connect()`` picks local ports from it)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _can_bind(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback TCP port that is free now and was not handed out before in this process.

    Ports are chosen *below* the ephemeral range when possible: a member restarted on the same
    port after a pause must not find it taken by some client's outgoing connection, which is
    what a port obtained by binding to port 0 (an ephemeral one) risks during chaos tests.
    Falls back to binding 127.0.0.1:0.
    """
    low, _ = _port_range()
    if low > 12000:
        for _ in range(200):
            port = random.randrange(10000, low - 1)
            if port not in _handed_out_ports and _can_bind(port):
                _handed_out_ports.add(port)
                return port
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out_ports:
            _handed_out_ports.add(port)
            return port
    raise RuntimeError("could not find a free loopback port")


def _server_env() -> dict[str, str]:
    """Environment for etcd/etcdctl: none of the caller's ETCD*/ETCDCTL* settings leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}
    goarch = _GOARCH.get(platform.machine(), platform.machine())
    if goarch not in _SUPPORTED_GOARCH:
        env["ETCD_UNSUPPORTED_ARCH"] = goarch
    return env


_prctl: Callable[..., int] | None
try:
    # Loaded here, not in the forked child: dlopen there could deadlock on the loader lock.
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it if the test process dies.

    The kernel sends it when the *thread* that forked exits, so start servers from the main
    thread (as fixtures do), not from a short-lived worker thread.
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def terminate(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """Stop ``proc`` for sure: SIGCONT (it may be frozen), SIGTERM, then SIGKILL after timeout."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    _live.discard(proc)


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live):
        with contextlib.suppress(Exception):
            proc.kill()
            proc.wait(timeout=5)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class EtcdctlError(subprocess.CalledProcessError):
    """A failed etcdctl call whose message shows what etcdctl said."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout: {self.stdout!r}\nstderr: {self.stderr!r}"


def run_etcdctl(
    endpoints: str, *args: str, check: bool = True, timeout: float = 10.0
) -> subprocess.CompletedProcess[str]:
    """Run ``etcdctl --endpoints ENDPOINTS ARGS`` (API v3), capturing text output."""
    env = _server_env()
    env["ETCDCTL_API"] = "3"
    argv = [ETCDCTL_BIN, "--endpoints", endpoints, *args]
    result = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and result.returncode != 0:
        raise EtcdctlError(result.returncode, argv, result.stdout, result.stderr)
    return result


class ServerProcess:
    """The lifecycle both kinds of test server share: start, stop, crash, hang, restart.

    Subclasses set `name`, `dir`, `data_dir`, `log_path`, `proc`, `frozen`, `_log` in their
    constructor and provide `product`, `argv()`, `prepare()` and `ready()`.
    """

    product: str
    name: str
    dir: Path
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None
    frozen: bool
    _log: IO[bytes] | None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Create what the server needs on disk before it starts."""
        raise NotImplementedError

    def ready(self, timeout: float) -> bool:
        """True once the server answers requests."""
        raise NotImplementedError

    def launch(self) -> None:
        """Start the process without waiting for it to serve (see :meth:`wait_serving`)."""
        if self.is_running():
            raise RuntimeError(f"{self.name} is already running")
        self.prepare()
        self._log = self.log_path.open("ab")
        banner = f"\n=== leaderrun tests: starting {self.name} at {time.time():.3f}\n"
        self._log.write(banner.encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=_server_env(),
            cwd=self.dir,
            start_new_session=True,  # tests that signal process groups must not hit servers
            # Only calls prctl, so safe in the forked child despite preexec_fn's caveats.
            preexec_fn=_die_with_parent,
        )
        _live.add(self.proc)
        self.frozen = False

    def wait_serving(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the server serves requests; raise with the log tail if it does not."""

        def serving() -> bool:
            if not self.is_running():
                raise RuntimeError(
                    f"{self.product} {self.name} exited early:\n{_tail(self.log_path)}"
                )
            return self.ready(timeout=1.0)

        message = f"{self.product} {self.name} to serve"
        try:
            wait_for(serving, timeout, interval=0.05, message=message)
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n--- {self.log_path}:\n{_tail(self.log_path)}") from None

    def start(self, wait: bool = True, timeout: float = START_TIMEOUT) -> None:
        """Start the process and (by default) return once it is serving."""
        self.launch()
        if wait:
            self.wait_serving(timeout)

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.product} {self.name} is not running")
        self.proc.send_signal(sig)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Graceful stop (SIGTERM; SIGKILL after ``timeout``). No-op when not running."""
        if self.proc is not None:
            terminate(self.proc, timeout)
        self._closed()

    def kill(self) -> None:
        """SIGKILL: a crash, as far as the cluster and its clients can tell."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
        if self.proc is not None:
            _live.discard(self.proc)
        self._closed()

    def _closed(self) -> None:
        self.frozen = False
        if self._log is not None:
            self._log.close()
            self._log = None

    def freeze(self) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing (a hung server)."""
        self._signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        self._signal(signal.SIGCONT)
        self.frozen = False

    def restart(self, down_seconds: float, wait: bool = True) -> None:
        """Stop, stay down for ``down_seconds`` (the fault being injected), start again.

        Same ports, same data. With ``wait`` it returns once the server serves, which in a
        multi-member cluster needs a quorum; pass ``wait=False`` when there is none.
        """
        self.stop()
        time.sleep(down_seconds)
        self.start(wait=wait)

    def is_running(self) -> bool:
        """True while the process exists (also when frozen)."""
        return self.proc is not None and self.proc.poll() is None


class EtcdMember(ServerProcess):
    """One etcd process. Its ports and data directory survive ``stop``/``restart``."""

    def __init__(
        self,
        name: str,
        base_dir: Path,
        *,
        client_port: int | None = None,
        peer_port: int | None = None,
        initial_cluster: str | None = None,
        cluster_token: str | None = None,
        heartbeat_interval_ms: int = 100,
        election_timeout_ms: int = 1000,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.client_port = client_port if client_port is not None else free_port()
        self.peer_port = peer_port if peer_port is not None else free_port()
        self.endpoint = f"127.0.0.1:{self.client_port}"
        self.client_url = f"http://{self.endpoint}"
        self.peer_url = f"http://127.0.0.1:{self.peer_port}"
        #: The member's own directory: ``data/`` is etcd's --data-dir, ``etcd.log`` its output.
        self.dir = base_dir / name
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / "etcd.log"
        self.initial_cluster = initial_cluster or f"{name}={self.peer_url}"
        self.cluster_token = cluster_token or f"leaderrun-test-{uuid.uuid4().hex[:12]}"
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.election_timeout_ms = election_timeout_ms
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False
        self._log: IO[bytes] | None = None

    def __repr__(self) -> str:
        state = "frozen" if self.frozen else "running" if self.is_running() else "stopped"
        return f"<EtcdMember {self.name} {self.endpoint} {state}>"

    def argv(self) -> list[str]:
        """The etcd command line (initial-cluster flags are ignored once data exists)."""
        return [
            ETCD_BIN,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self.cluster_token,
            "--heartbeat-interval", str(self.heartbeat_interval_ms),
            "--election-timeout", str(self.election_timeout_ms),
            # Metrics stay on the client URL (no --listen-metrics-urls): no extra port to clash.
            "--logger", "zap",
            "--log-outputs", "stderr",
            *self.extra_args,
        ]  # fmt: skip

    product = "etcd"

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)  # etcd warns about anything looser

    def ready(self, timeout: float) -> bool:
        return self.health(timeout=timeout)

    def health(self, timeout: float = 2.0) -> bool:
        """True when this member answers ``/health`` positively (it sees a raft leader)."""
        try:
            with _NO_PROXY.open(f"{self.client_url}/health", timeout=timeout) as resp:
                body = json.loads(resp.read())
        except (OSError, ValueError):
            return False
        return str(body.get("health")).lower() == "true"

    def status(self, timeout: float = 3.0) -> dict[str, object] | None:
        """``etcdctl endpoint status`` of this member alone, or None if it does not answer."""
        res = run_etcdctl(
            self.endpoint,
            "endpoint", "status", "-w", "json",
            f"--command-timeout={timeout}s", f"--dial-timeout={timeout}s",
            check=False, timeout=timeout + 5,
        )  # fmt: skip
        try:
            entries = json.loads(res.stdout)
        except ValueError:
            return None
        if not entries:
            return None
        status: dict[str, object] = entries[0]["Status"]
        return status


class EtcdCluster:
    """``size`` etcd members on loopback forming one cluster (size 1 is a plain server)."""

    def __init__(
        self,
        tmpdir: Path,
        size: int = 1,
        *,
        heartbeat_interval_ms: int = 100,
        election_timeout_ms: int = 1000,
        extra_args: Sequence[str] = (),
    ) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.tmpdir = Path(tmpdir)
        token = f"leaderrun-test-{uuid.uuid4().hex[:12]}"
        ports = [(free_port(), free_port()) for _ in range(size)]
        initial = ",".join(f"m{i}=http://127.0.0.1:{peer}" for i, (_, peer) in enumerate(ports))
        self.members = [
            EtcdMember(
                f"m{i}",
                self.tmpdir,
                client_port=client,
                peer_port=peer,
                initial_cluster=initial,
                cluster_token=token,
                heartbeat_interval_ms=heartbeat_interval_ms,
                election_timeout_ms=election_timeout_ms,
                extra_args=extra_args,
            )
            for i, (client, peer) in enumerate(ports)
        ]

    def __repr__(self) -> str:
        return f"<EtcdCluster {self.members!r}>"

    @property
    def endpoints(self) -> str:
        """Comma-separated client endpoints, as etcdctl's ``--endpoints`` takes them."""
        return ",".join(m.endpoint for m in self.members)

    @property
    def backend_url(self) -> str:
        """leaderrun's ``--backend`` URL for this cluster."""
        return f"etcd://{self.endpoints}"

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Launch every member, then wait for the cluster to be healthy.

        All are launched before any is awaited: a multi-member cluster elects a leader only
        once a quorum is up. On failure every member is stopped before the error propagates,
        since a fixture whose setup raises gets no teardown.
        """
        try:
            for m in self.members:
                m.launch()
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every member gracefully, the raft leader first, within bounded time.

        A SIGTERMed etcd 3.4 leader first hands leadership over and waits up to 7 s for that
        to succeed; if its followers were already going, that wait is lost every time. So
        the current leader is stopped while a follower can still take over, then the next
        one; members without a leader (no quorum) are stopped all at once, and anything
        still up after the bounded wait is SIGKILLed. Frozen members are thawed first, or a
        thawed stale leader would spend those 7 s handing over to members already gone.
        """
        thawed = [m for m in self.members if m.frozen and m.is_running()]
        for m in thawed:
            m.thaw()
        if thawed:
            with contextlib.suppress(TimeoutError, RuntimeError):
                self.wait_healthy(timeout=3.0)
        for _ in range(len(self.members)):
            if len(self.live_members()) < 2:
                break
            try:
                leader = self.raft_leader()
            except RuntimeError:
                break
            leader.stop()
        rest = [m for m in self.members if m.proc is not None and m.proc.poll() is None]
        for m in rest:
            assert m.proc is not None
            with contextlib.suppress(ProcessLookupError):
                m.proc.send_signal(signal.SIGCONT)
                m.proc.send_signal(signal.SIGTERM)
        for m in self.members:
            m.stop()

    def live_members(self) -> list[EtcdMember]:
        """Members whose process runs and is not frozen."""
        return [m for m in self.members if m.is_running() and not m.frozen]

    def etcdctl(
        self, *args: str, check: bool = True, timeout: float = 10.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``etcdctl`` (API v3) against all members; text output captured."""
        return run_etcdctl(self.endpoints, *args, check=check, timeout=timeout)

    def raft_leader(self) -> EtcdMember:
        """The member that is raft leader, as the live members report it.

        A member counts when its own status says it leads; if two claim it (a stale leader
        just thawed), the higher raft term wins. Raises when no live member leads.
        """
        best: tuple[int, EtcdMember] | None = None
        for m in self.live_members():
            st = m.status()
            if st is None:
                continue
            header = st.get("header")
            member_id = header.get("member_id") if isinstance(header, dict) else None
            if member_id and member_id == st.get("leader"):
                term = int(str(st.get("raftTerm", 0)))
                if best is None or term > best[0]:
                    best = (term, m)
        if best is None:
            raise RuntimeError(f"no raft leader among live members of {self!r}")
        return best[1]

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until there is a raft leader and every live member answers ``/health``."""

        def healthy() -> bool:
            live = self.live_members()
            for m in self.members:
                if m.proc is not None and m.proc.poll() is not None and m.proc in _live:
                    raise RuntimeError(f"etcd {m.name} exited:\n{_tail(m.log_path)}")
            return bool(live) and all(m.health(timeout=1.0) for m in live)

        try:
            wait_for(healthy, timeout, interval=0.05, message=f"{self!r} to be healthy")
        except TimeoutError as e:
            logs = "\n".join(f"--- {m.log_path}:\n{_tail(m.log_path, 15)}" for m in self.members)
            raise TimeoutError(f"{e}\n{logs}") from None


# -- ZooKeeper ---------------------------------------------------------------------------------

ZK_JAR = Path("/usr/share/java/zookeeper.jar")
ZK_NETTY_JARS = (
    Path("/usr/share/java/netty-codec.jar"),
    Path("/usr/share/java/netty-resolver.jar"),
)
#: An slf4j binding so the server logs somewhere (its own file) instead of warning about none.
_SLF4J_BINDINGS = ("slf4j-simple.jar", "slf4j-nop.jar")
#: tickTime of the test servers: sessions of 1 s .. 120 s are granted as asked (SPEC tests use
#: 6 s and 60 s). A private server can pass other limits to test clamping.
ZK_TICK_MS = 500
ZK_MAX_SESSION_MS = 120_000
ZK_JVM_OPTS = (
    "-Xmx256m",
    "-Xss512k",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",  # starts faster; peak speed does not matter here
    "-Djava.net.preferIPv4Stack=true",
    "-Dzookeeper.jmx.log4j.disable=true",
)


def _slf4j_binding() -> Path:
    for name in _SLF4J_BINDINGS:
        path = Path("/usr/share/java") / name
        if path.exists():
            return path
    raise RuntimeError("no slf4j binding jar in /usr/share/java (install libslf4j-java)")


def four_letter(endpoint: str, command: str, timeout: float = 2.0) -> str | None:
    """Send a ZooKeeper four-letter command (``ruok``, ``srvr``, ``dump``...); None if no answer."""
    host, port = endpoint.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(command.encode())
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError:
        return None
    return b"".join(chunks).decode(errors="replace")


class ZkMember(ServerProcess):
    """One ZooKeeper server (``QuorumPeerMain`` from Debian's package). Its ports, id and data
    directory survive ``stop``/``restart``."""

    def __init__(
        self,
        sid: int,
        base_dir: Path,
        *,
        client_port: int | None = None,
        quorum_ports: tuple[int, int] | None = None,
        servers: str = "",
        tick_ms: int = ZK_TICK_MS,
        min_session_ms: int | None = None,
        max_session_ms: int = ZK_MAX_SESSION_MS,
    ) -> None:
        self.sid = sid
        self.name = f"zk{sid}"
        self.client_port = client_port if client_port is not None else free_port()
        self.quorum_ports = quorum_ports
        self.servers = servers
        self.endpoint = f"127.0.0.1:{self.client_port}"
        self.dir = base_dir / self.name
        self.data_dir = self.dir / "data"
        self.config_path = self.dir / "zoo.cfg"
        self.log_path = self.dir / "zookeeper.log"
        self.tick_ms = tick_ms
        self.min_session_ms = min_session_ms if min_session_ms is not None else 2 * tick_ms
        self.max_session_ms = max_session_ms
        #: More zoo.cfg lines (TLS: `serverCnxnFactory`, `secureClientPort`, `ssl.*`).
        self.extra_config: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False
        self._log: IO[bytes] | None = None

    def __repr__(self) -> str:
        state = "frozen" if self.frozen else "running" if self.is_running() else "stopped"
        return f"<ZkMember {self.name} {self.endpoint} {state}>"

    def write_config(self) -> None:
        lines = [
            f"tickTime={self.tick_ms}",
            "initLimit=10",
            "syncLimit=4",
            f"dataDir={self.data_dir}",
            f"clientPort={self.client_port}",
            "clientPortAddress=127.0.0.1",
            f"minSessionTimeout={self.min_session_ms}",
            f"maxSessionTimeout={self.max_session_ms}",
            "admin.enableServer=false",
            "4lw.commands.whitelist=ruok,srvr,mntr,stat,conf,envi,dump,cons",
            "forceSync=no",  # the tests kill processes, not machines; fsync only slows them
            "autopurge.purgeInterval=0",
        ]
        if self.servers:
            lines.append(self.servers)
        lines += self.extra_config
        self.config_path.write_text("\n".join(lines) + "\n")
        (self.data_dir / "myid").write_text(f"{self.sid}\n")

    def argv(self) -> list[str]:
        # zookeeper.jar's manifest names netty's transport and handler jars, not the codec
        # and resolver ones they need: NettyServerCnxnFactory (TLS) fails without them.
        netty = [p for p in ZK_NETTY_JARS if p.exists()]
        classpath = ":".join(map(str, [ZK_JAR, _slf4j_binding(), *netty]))
        return [
            "java",
            *ZK_JVM_OPTS,
            "-cp",
            classpath,
            "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            str(self.config_path),
        ]

    product = "ZooKeeper"

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.write_config()

    def ready(self, timeout: float) -> bool:
        return self.serving(timeout=timeout)

    def mode(self, timeout: float = 2.0) -> str | None:
        """``standalone``, ``leader`` or ``follower`` once serving; None before (or frozen)."""
        answer = four_letter(self.endpoint, "srvr", timeout)
        if answer is None:
            return None
        for line in answer.splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return None

    def serving(self, timeout: float = 2.0) -> bool:
        """``ruok`` answers ``imok`` and the server serves (``srvr`` reports a mode)."""
        return four_letter(self.endpoint, "ruok", timeout) == "imok" and bool(self.mode(timeout))

    def sessions(self) -> set[int] | None:
        """Ids of the sessions this server tracks (``dump``; the leader or a standalone
        server tracks them all), or None if it does not answer."""
        answer = four_letter(self.endpoint, "dump")
        if answer is None or "Session" not in answer:
            return None
        tracker = answer.split("ephemeral nodes dump", 1)[0]
        return {int(token, 16) for token in re.findall(r"0x[0-9a-fA-F]+", tracker)}


class ZkEnsemble:
    """``size`` ZooKeeper servers on loopback forming one ensemble (size 1: standalone)."""

    def __init__(self, tmpdir: Path, size: int = 1, **member_options: int) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.tmpdir = Path(tmpdir)
        clients = [free_port() for _ in range(size)]
        quorum = [(free_port(), free_port()) for _ in range(size)] if size > 1 else []
        servers = "\n".join(
            f"server.{n}=127.0.0.1:{peer}:{election}"
            for n, (peer, election) in enumerate(quorum, start=1)
        )
        self.members = [
            ZkMember(
                n,
                self.tmpdir,
                client_port=client,
                quorum_ports=quorum[n - 1] if quorum else None,
                servers=servers,
                **member_options,
            )
            for n, client in enumerate(clients, start=1)
        ]

    def __repr__(self) -> str:
        return f"<ZkEnsemble {self.members!r}>"

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    @property
    def backend_url(self) -> str:
        """leaderrun's ``--backend`` URL for this ensemble (no chroot)."""
        return f"zk://{self.endpoints}"

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Launch every member, then wait until each serves (an ensemble needs a quorum up
        before any member serves). On failure everything is stopped before raising."""
        try:
            for m in self.members:
                m.launch()
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for m in self.members:
            if m.frozen and m.is_running():
                m.thaw()
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    m.proc.send_signal(signal.SIGTERM)
        for m in self.members:
            m.stop()

    def live_members(self) -> list[ZkMember]:
        return [m for m in self.members if m.is_running() and not m.frozen]

    def leader(self) -> ZkMember:
        """The member whose ``srvr`` says ``Mode: leader`` (or the standalone server)."""
        for m in self.live_members():
            if m.mode() in ("leader", "standalone"):
                return m
        raise RuntimeError(f"no leader among live members of {self!r}")

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until every live member serves (so the ensemble has a leader)."""

        def healthy() -> bool:
            for m in self.members:
                if m.proc is not None and m.proc.poll() is not None and m.proc in _live:
                    raise RuntimeError(f"ZooKeeper {m.name} exited:\n{_tail(m.log_path)}")
            live = self.live_members()
            return bool(live) and all(m.serving(timeout=1.0) for m in live)

        try:
            wait_for(healthy, timeout, interval=0.05, message=f"{self!r} to serve")
        except TimeoutError as e:
            logs = "\n".join(f"--- {m.log_path}:\n{_tail(m.log_path, 15)}" for m in self.members)
            raise TimeoutError(f"{e}\n{logs}") from None


# -- PostgreSQL (the fenced resource of examples/fenced-postgres) ------------------------------

PG_USER = "postgres"


def postgres_bindir() -> Path | None:
    """Debian's versioned server binaries (/usr/lib/postgresql/<major>/bin), newest first."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    return found[0].parent if found else None


class PostgresServer:
    """A throwaway PostgreSQL on a free loopback port, trust auth, superuser ``postgres``.

    The server refuses to run as root, so when the tests run as root it runs as the
    ``postgres`` system user, in a directory of its own under /tmp (pytest's tmp dirs are 0700
    root). It runs in the foreground (``postgres -D``), so it dies with the test process.
    """

    def __init__(self) -> None:
        import pwd
        import tempfile

        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (Debian package `postgresql`)")
        self.bindir = bindir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="leaderrun-pg-"))
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = PG_USER
            pw = pwd.getpwnam(PG_USER)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.proc: subprocess.Popen[bytes] | None = None
        self.dsn = f"host=127.0.0.1 port={self.port} user={PG_USER} dbname=postgres"

    def _run(self, *argv: str) -> None:
        subprocess.run(argv, user=self.user, check=True, capture_output=True, timeout=60,
                       cwd=self.dir, stdin=subprocess.DEVNULL)  # fmt: skip

    def start(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", PG_USER,
                  "--auth=trust", "--no-sync", "-E", "UTF8")  # fmt: skip
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(self.bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
             "-c", "fsync=off"],
            user=self.user, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=self.dir, start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
        log.close()
        _live.add(self.proc)

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited:\n{_tail(self.log_path)}")
            with socket.socket() as s:
                s.settimeout(0.5)
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(ready, START_TIMEOUT, message="postgres to listen")
        time.sleep(0.3)  # accepting TCP precedes accepting logins by a moment

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)  # fast shutdown
            terminate(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)
