"""Parsing and validation of everything the user can set.

All checks happen here, before leaderrun connects anywhere, so that bad input never leaves a
half-done state in the store: a bad duration, URL, name or an impossible timing combination is
a `UsageError` with a message that names the problem and the fix.
"""

from __future__ import annotations

import math
import os
import re
import socket
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from leaderrun.errors import UsageError

ELECTION_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
PREFIX = re.compile(r"(/[A-Za-z0-9._-]+)+")
BARE_SECONDS = re.compile(r"\d+(?:\.\d+)?")
#: One part of a duration; a duration is one or more parts, largest unit first (`1h5m`, `2m500ms`).
DURATION_PART = re.compile(r"(?P<number>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h)")
DURATION = re.compile(rf"(?:{DURATION_PART.pattern})+")
UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_DURATION = 7 * 24 * 3600.0
KILL_LEAD = 0.25
#: zks:// defaults to 2281, the secureClientPort of ZooKeeper's own TLS examples.
DEFAULT_PORTS = {"etcd": 2379, "etcds": 2379, "zk": 2181, "zks": 2281}
#: Other names of a scheme, mapped before anything looks the scheme up.
SCHEME_ALIASES = {"zookeeper": "zk"}

#: Which backend-specific options each URL scheme uses (click parameter names). An option given
#: with a scheme that does not use it is a usage error naming it, so `zk://... --user` cannot run
#: in plaintext without a word. Schemes not listed here (third-party backends) are not checked.
#: A new scheme or a new option is one line here (as `"zks": ZK_AUTH | TLS_FILES` is).
#: `zk://` stays plaintext: TLS to ZooKeeper is `zks://`, so the TLS files are not `zk://`'s.
TLS_FILES = frozenset({"cacert", "cert", "key"})
ETCD_AUTH = frozenset({"user", "password_file"})
ZK_AUTH = frozenset({"zk_auth_file"})
#: `--zk-tick-time`: the ensemble's tickTime, which bounds how old a renewal must be before a
#: follower's answer proves the ensemble leader heard of it (docs/backends.md); not etcd's.
ZK_TICK = frozenset({"zk_tick_time"})
#: The largest `--max-holders`: every waiter reads the whole queue, so N stays small.
MAX_HOLDERS = 1024

SCHEME_OPTIONS: dict[str, frozenset[str]] = {
    "etcd": TLS_FILES | ETCD_AUTH,
    "etcds": TLS_FILES | ETCD_AUTH,
    "zk": ZK_AUTH | ZK_TICK,
    "zks": ZK_AUTH | ZK_TICK | TLS_FILES,
}
BACKEND_OPTIONS = frozenset().union(*SCHEME_OPTIONS.values())

#: Commands whose basename says nothing about the job (`sh -c 'backup-db'`, `python3 job.py`):
#: two unrelated jobs would share one election, so there is no default name (SPEC §2).
#: Versioned names (`python3.11`, `perl5.36`, `pypy3`) are matched by INTERPRETER_VERSIONED.
INTERPRETERS = frozenset(
    {
        # shells
        "sh", "bash", "dash", "zsh", "ksh", "mksh", "pdksh", "ash", "csh", "tcsh", "fish",
        "busybox", "rbash", "yash", "nu", "pwsh", "xonsh", "elvish",
        # interpreters and runtimes
        "python", "pypy", "perl", "ruby", "node", "nodejs", "deno", "bun", "php", "lua",
        "luajit", "tclsh", "wish", "awk", "gawk", "mawk", "nawk", "java", "Rscript",
        "julia", "guile", "racket", "sbcl", "ocaml", "erl", "escript", "elixir", "groovy",
        "scala", "kotlin", "dotnet", "osascript", "expect", "make", "npx", "npm", "uv",
        "uvx", "pipx", "poetry", "pipenv", "bundle", "rake", "cargo", "go",
        # wrappers that run another command
        "env", "nice", "nohup", "timeout", "sudo", "doas", "su", "runuser", "setsid", "chrt",
        "ionice", "taskset", "stdbuf", "time", "xargs", "flock", "chpst",
        "setpriv", "unshare", "nsenter", "systemd-run", "docker", "podman", "kubectl",
        "ssh", "leaderrun", "firejail", "bwrap", "strace", "ltrace",
        "valgrind", "gdb", "catchsegv", "numactl", "cgexec", "prlimit",
    }
)  # fmt: skip
INTERPRETER_VERSIONED = re.compile(
    r"(python|pypy|perl|ruby|node|php|lua|luajit|tclsh|wish|guile|java|bash|zsh)"
    r"[0-9]+(?:\.[0-9]+)*[a-z]?"
)


def parse_duration(text: str, option: str) -> float:
    """Parse `500ms`, `10s`, `5m`, `1h`, compounds largest unit first (`1m30s`, `1h5m`,
    `2m500ms`), or bare seconds into seconds (a positive float)."""
    text = text.strip()
    if BARE_SECONDS.fullmatch(text):
        seconds = float(text)
    elif DURATION.fullmatch(text):
        parts = [(m["number"], m["unit"]) for m in DURATION_PART.finditer(text)]
        order = [list(UNIT_SECONDS).index(unit) for _, unit in parts]
        if order != sorted(set(order), reverse=True):
            raise UsageError(
                f"{option}: {text!r} is not a duration; give each unit once, largest first, "
                "like 1h5m, 1m30s or 2m500ms"
            )
        seconds = sum(float(number) * UNIT_SECONDS[unit] for number, unit in parts)
    else:
        raise UsageError(
            f"{option}: {text!r} is not a duration; write it like 500ms, 10s, 1m30s, 1h or 30"
        )
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_DURATION:
        raise UsageError(f"{option}: {text!r} must be more than 0 and at most 7 days")
    return seconds


def is_interpreter(command: str) -> bool:
    """True if COMMAND's basename is a shell, interpreter or wrapper (`sh`, `python3.11`, `env`)."""
    name = os.path.basename(command)
    return name in INTERPRETERS or bool(INTERPRETER_VERSIONED.fullmatch(name))


def default_election_name(command: str) -> str:
    """The election's name when --election is not given: COMMAND's basename, unless that names
    a shell or interpreter (whose jobs would all share one election) or is not a valid name."""
    name = os.path.basename(command)
    if is_interpreter(command):
        raise UsageError(
            f"{name!r} is a shell or interpreter: every job run through it would share the "
            f"election {name!r}; name the election with --election NAME"
        )
    return validate_election_name(name, derived_from_command=True)


def validate_election_name(name: str, *, derived_from_command: bool = False) -> str:
    """`[A-Za-z0-9._-]{1,128}`, except `.` and `..`, which ZooKeeper refuses as path parts."""
    if ELECTION_NAME.fullmatch(name) and name not in (".", ".."):
        return name
    if derived_from_command:
        raise UsageError(
            f"the command name {name!r} is not a valid election name "
            "([A-Za-z0-9._-], 1-128 characters); name the election with --election NAME"
        )
    raise UsageError(
        f"--election: {name!r} is not a valid election name; "
        "use 1-128 characters of A-Z a-z 0-9 . _ -"
    )


def validate_prefix(prefix: str) -> str:
    if not PREFIX.fullmatch(prefix) or any(part in (".", "..") for part in prefix.split("/")):
        raise UsageError(
            f"--prefix: {prefix!r} is not a valid prefix; write it like /leaderrun or /jobs/prod"
        )
    return prefix


def validate_identity(identity: str) -> str:
    if not identity or len(identity) > 256 or not identity.isprintable():
        raise UsageError(
            "--id: the identity must be 1-256 printable characters (it is shown to operators)"
        )
    return identity


def default_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class BackendURL:
    """A parsed `--backend` URL. `str()` gives it back without any secret."""

    scheme: str
    endpoints: tuple[Endpoint, ...]
    path: str = ""

    def __str__(self) -> str:
        return f"{self.scheme}://{','.join(map(str, self.endpoints))}{self.path}"


def parse_backend_url(text: str) -> BackendURL:
    """Parse `etcd://h1:2379,h2:2379` or `zk://h1:2181,h2:2181/chroot`.

    Passwords in URLs are refused: a URL ends up in process listings, shell history and logs.
    """
    scheme, sep, rest = text.partition("://")
    if not sep or not scheme:
        raise UsageError(f"--backend: {text!r} is not a URL; {_url_hint(text)}")
    scheme = scheme.lower()
    scheme = SCHEME_ALIASES.get(scheme, scheme)
    hosts, slash, path = rest.partition("/")
    if "@" in hosts:
        raise UsageError(
            "--backend: credentials in the URL are refused (they would show in process "
            "listings); use --user with --password-file instead"
        )
    if "?" in rest or "#" in rest:
        raise UsageError(f"--backend: {text!r} has a query or fragment; remove it")
    endpoints = tuple(_parse_endpoint(item, scheme, text) for item in hosts.split(","))
    return BackendURL(scheme=scheme, endpoints=endpoints, path=(slash + path).rstrip("/"))


#: A scheme with `://` mistyped (`zk//h`, `zk:/h`, `etcd:h`), and a bare `host:port` list.
MISTYPED_SCHEME = re.compile(r"(?i)(?P<scheme>etcds?|zks?|zookeeper)(?P<sep>[:/]+)(?P<rest>.*)")
BARE_HOSTS = re.compile(r"[A-Za-z0-9._\-\[\]:,]+(?:/[A-Za-z0-9._\-][A-Za-z0-9._/\-]*)?")


def _url_hint(text: str) -> str:
    """The fix for a `--backend` without `://`, with the user's own hosts where they show."""
    text = text.strip()
    mistyped = MISTYPED_SCHEME.fullmatch(text)
    if mistyped and not (mistyped["sep"] == ":" and mistyped["rest"][:1].isdigit()):
        scheme = mistyped["scheme"].lower()
        scheme, hosts = SCHEME_ALIASES.get(scheme, scheme), mistyped["rest"]
    elif text and BARE_HOSTS.fullmatch(text):
        scheme, hosts = ("zk" if ":2181" in text else "etcd"), text
    else:
        return "write it like etcd://10.0.0.1:2379,10.0.0.2:2379 or zk://10.0.0.1:2181"
    first, comma, more = (hosts or "host").partition(",")
    host, slash, path = first.partition("/")
    if ":" not in host:
        host = f"{host or 'host'}:{DEFAULT_PORTS[scheme]}"
    return f"did you mean {scheme}://{host}{slash}{path}{comma}{more}?"


def _parse_endpoint(item: str, scheme: str, text: str) -> Endpoint:
    if not item:
        raise UsageError(f"--backend: {text!r} has an empty host; write host:port[,host:port]")
    try:
        parsed = urlsplit(f"//{item}")
        port = parsed.port
        host = parsed.hostname
    except ValueError as exc:
        raise UsageError(f"--backend: bad host:port {item!r} in {text!r} ({exc})") from None
    if not host:
        raise UsageError(f"--backend: bad host:port {item!r} in {text!r}")
    if port is None:
        port = DEFAULT_PORTS.get(scheme)
        if port is None:
            raise UsageError(f"--backend: {item!r} needs a port")
    if port == 0:
        raise UsageError(f"--backend: port 0 in {item!r} is not a port to connect to")
    return Endpoint(host=host, port=port)


def safety_margin(ttl: float) -> float:
    """SPEC §3: the child must be dead this long before the server may expire the lease."""
    return max(0.5, ttl / 20)


@dataclass(frozen=True)
class Timing:
    """The lease TTL and the margins derived from it (SPEC §3, timing rule)."""

    ttl: float
    kill_grace: float
    renew_interval: float
    #: False when the renew interval is the default (TTL/4): a backend may then shorten it
    #: where the store needs more room (a ZooKeeper ensemble's sync bound).
    renew_given: bool = True

    @property
    def safety(self) -> float:
        return safety_margin(self.ttl)

    def kill_by(self, lease_deadline: float) -> float:
        """When SIGKILL must be sent so the group is dead at `lease_deadline - safety`.

        SIGKILL is not instantaneous (the kernel must tear the processes down and we must
        see them gone), so it goes out KILL_LEAD before the point the rule names.
        """
        return lease_deadline - self.safety - KILL_LEAD

    @property
    def stop_margin(self) -> float:
        """How long before the lease deadline stopping must begin: `stop_at` is that far
        ahead of it, a full kill grace before `kill_by`."""
        return self.safety + KILL_LEAD + self.kill_grace

    def stop_at(self, lease_deadline: float) -> float:
        """When stopping (SIGTERM) must begin: a full kill grace before `kill_by`."""
        return lease_deadline - self.stop_margin

    def check(self, what: str = "--ttl") -> None:
        """Refuse combinations under which the timing rule cannot be kept."""
        needed = self.renew_interval + self.kill_grace + self.safety + KILL_LEAD
        if needed >= self.ttl:
            raise UsageError(
                f"timing: renew interval {self.renew_interval:g}s + kill grace "
                f"{self.kill_grace:g}s + safety {self.safety:g}s + {KILL_LEAD:g}s for SIGKILL "
                "must be less than the "
                f"{what} of {self.ttl:g}s; raise --ttl above {needed:g}s or lower "
                "--kill-grace / --renew-interval"
            )

    def with_granted_ttl(self, granted: float) -> Timing:
        """The server may grant another TTL than asked; the rule uses what it granted."""
        return replace(self, ttl=granted)


@dataclass(frozen=True)
class Security:
    """TLS files and credentials. Secrets are kept out of `repr()` so they cannot reach a log."""

    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    zk_auth: str | None = field(default=None, repr=False)  # "user:password" for digest auth

    def wants_tls(self, scheme: str) -> bool:
        return scheme in ("etcds", "zks") or any((self.cacert, self.cert, self.key))


def read_secret_file(path: str, option: str) -> tuple[str, bool]:
    """The file's content without its trailing newline, and whether others may read it.

    A bare name (no '/') is a systemd credential when `$CREDENTIALS_DIRECTORY` is set
    (`LoadCredential=NAME:/etc/...` then `--password-file NAME`): it is read from that
    directory. Any other path, or a bare name outside systemd, is used as given.
    """
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and path and "/" not in path:
        path = os.path.join(credentials, path)
    try:
        with open(path, encoding="utf-8") as handle:
            secret = handle.read().rstrip("\r\n")
        exposed = bool(os.stat(path).st_mode & 0o077)
    except OSError as exc:
        raise UsageError(f"{option}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{option}: {path} is not UTF-8 text") from None
    if not secret:
        raise UsageError(f"{option}: {path} is empty")
    return secret, exposed


def check_readable(path: str | None, option: str) -> str | None:
    if path is not None and not os.access(path, os.R_OK):
        raise UsageError(f"{option}: cannot read {path}; check the path and its permissions")
    return path


@dataclass(frozen=True)
class Settings:
    """Everything `run` needs, already validated."""

    backend: BackendURL
    election: str
    prefix: str
    identity: str
    timing: Timing
    connect_timeout: float
    command: tuple[str, ...] = ()
    verbosity: int = 0
    log_format: str = "text"
    no_wait: bool = False
    wait_timeout: float | None = None
    skip_exit_code: int = 0
    once_per: float | None = None
    #: `--max-holders`: up to this many candidates hold at once (1: the election).
    max_holders: int = 1
    forever: bool = False
    restart_delay: float = 1.0
    metrics_addr: str | None = None
    security: Security = field(default_factory=Security)
    #: `--zk-tick-time`: a ZooKeeper ensemble's tickTime, when the servers do not tell it
    #: (`conf`); None: ask them.
    zk_tick_time: float | None = None

    @property
    def election_path(self) -> str:
        return f"{self.prefix}/{self.election}"


def build_timing(ttl: float, kill_grace: float, renew_interval: float | None) -> Timing:
    timing = Timing(
        ttl=ttl,
        kill_grace=kill_grace,
        renew_interval=renew_interval if renew_interval is not None else ttl / 4,
        renew_given=renew_interval is not None,
    )
    timing.check()
    return timing
