"""Prometheus metrics and health endpoints (`--metrics-addr HOST:PORT`, SPEC §5).

Served from the worker process, which is where the lease and the child live:
- `/metrics`: Prometheus text format, every series labelled by election (no `*_created`);
- `/healthz`: 200 while the supervision loop answers (it is asked through its own wake-up
  pipe, so a stuck loop gives 503 within a second), else 503;
- `/leader`: JSON with this candidate's role, the leader's identity and fencing token;
- anything else: 404.

Without `--metrics-addr` nothing is counted and prometheus_client is never imported:
`leaderrun -- true` must start fast, and the functions below are then no-ops.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from leaderrun import __version__
from leaderrun.errors import UsageError

RENEW_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: How long `/healthz` waits for the supervision loop to answer.
HEALTH_TIMEOUT = 1.0


class Registry:
    """The series, created when serving starts, initialised for the election."""

    def __init__(self, election: str, max_holders: int = 1) -> None:
        from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # type: ignore[no-untyped-call]
        label = ["election"]
        self.build_info = Gauge("leaderrun_build_info", "leaderrun's version", ["version"])
        self.build_info.labels(__version__).set(1)
        self.is_leader = Gauge(
            "leaderrun_is_leader", "1 while this candidate leads the election", label
        )
        self.terms = Counter("leaderrun_terms", "Terms won (times elected)", label)
        self.child_starts = Counter("leaderrun_child_starts", "Children started", label)
        self.child_exits = Counter(
            "leaderrun_child_exits",
            "Children ended, by the child's own exit status (128+N: killed by signal N)",
            ["election", "status"],
        )
        self.renew_latency = Histogram(
            "leaderrun_renew_latency_seconds",
            "Round trip of answered lease keep-alives / session requests",
            label,
            buckets=RENEW_BUCKETS,
        )
        self.last_renew = Gauge(
            "leaderrun_last_renew_timestamp_seconds",
            "Unix time of the send of the newest answered renewal",
            label,
        )
        self.lease_ttl = Gauge(
            "leaderrun_lease_ttl_seconds", "The TTL / session timeout the server granted", label
        )
        self.fencing_token = Gauge(
            "leaderrun_fencing_token", "Fencing token of the current term (0: not leading)", label
        )
        self.last_success = Gauge(
            "leaderrun_last_success_timestamp_seconds",
            "Unix time at which a child last exited 0 here",
            label,
        )
        self.holders = Gauge(
            "leaderrun_holders", "How many candidates may hold at once (--max-holders)", label
        )
        self.slot = Gauge(
            "leaderrun_slot", "This candidate's slot while it holds (-1: not holding)", label
        )
        self.backend_errors = Counter(
            "leaderrun_backend_errors", "Failed requests to the backend", label
        )
        for series in (self.is_leader, self.terms, self.child_starts, self.backend_errors,
                       self.renew_latency, self.lease_ttl, self.fencing_token):  # fmt: skip
            series.labels(election)
        self.holders.labels(election).set(max_holders)
        self.slot.labels(election).set(-1)


_registry: Registry | None = None


def _always_healthy(timeout: float) -> bool:
    return True


def _nothing_known() -> dict[str, Any]:
    return {"role": "starting"}


#: Set by the supervisor: asks its loop to answer within the timeout (True) or not (False).
health_probe: Callable[[float], bool] = _always_healthy
#: Set by the supervisor: this candidate's view of the election for `/leader`.
leader_view: Callable[[], dict[str, Any]] = _nothing_known


def set_leader(
    election: str, leading: bool, token: int = 0, ttl: float | None = None, slot: int = 0
) -> None:
    if (r := _registry) is not None:
        r.is_leader.labels(election).set(1 if leading else 0)
        r.slot.labels(election).set(slot if leading else -1)
        r.fencing_token.labels(election).set(token if leading else 0)
        if ttl is not None:
            r.lease_ttl.labels(election).set(ttl)
        if leading:
            r.terms.labels(election).inc()


def child_started(election: str) -> None:
    if (r := _registry) is not None:
        r.child_starts.labels(election).inc()


def child_exited(election: str, status: int) -> None:
    """`status` is the child's own: its exit code, or 128+N when a signal ended it."""
    if (r := _registry) is not None:
        r.child_exits.labels(election, str(status)).inc()
        if status == 0:
            r.last_success.labels(election).set(time.time())


def renewed(election: str, sent_at: float) -> None:
    """Record an answered renewal sent at `sent_at` (monotonic)."""
    if (r := _registry) is None:
        return
    now = time.monotonic()
    r.renew_latency.labels(election).observe(now - sent_at)
    r.last_renew.labels(election).set(time.time() - (now - sent_at))


def backend_error(election: str) -> None:
    if (r := _registry) is not None:
        r.backend_errors.labels(election).inc()


def serve(address: str, election: str, max_holders: int = 1) -> None:
    """Start the endpoints, or fail with a usage error naming the address."""
    global _registry
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(
            f"--metrics-addr: {address!r} is not HOST:PORT; write it like 127.0.0.1:9464"
        )
    if _registry is None:
        _registry = Registry(election, max_holders)
        _export_dropped_log_lines()
    try:
        server = ThreadingHTTPServer((host.strip("[]") or "0.0.0.0", int(port)), Endpoints)
    except OSError as exc:
        raise UsageError(f"--metrics-addr: cannot listen on {address}: {exc.strerror}") from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()


class Endpoints(BaseHTTPRequestHandler):
    """`/metrics`, `/healthz`, `/leader`; 404 for anything else."""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            alive = health_probe(HEALTH_TIMEOUT)
            self._send(200 if alive else 503, b"ok\n" if alive else b"supervision loop stuck\n")
        elif path == "/leader":
            self._send(200, json.dumps(leader_view()).encode() + b"\n", "application/json")
        else:
            self._send(404, b"not found: try /metrics, /healthz or /leader\n")

    def _send(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not news for the operator."""


def _export_dropped_log_lines() -> None:
    """`leaderrun_log_lines_dropped_total`: read from the log module at each scrape."""
    from prometheus_client import REGISTRY
    from prometheus_client.core import CounterMetricFamily
    from prometheus_client.registry import Collector

    from leaderrun import log

    class DroppedLogLines(Collector):
        def collect(self) -> Any:
            yield CounterMetricFamily(
                "leaderrun_log_lines_dropped",
                "leaderrun's own log lines dropped because stderr was not writable",
                value=log.dropped_lines(),
            )

    REGISTRY.register(DroppedLogLines())
