"""Prometheus metrics for alerting on leaderrun (`--metrics-addr HOST:PORT`).

The metrics are always counted (it costs nothing) and served only when asked, from the worker
process, which is where the lease and the child live. Every series carries the election name.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from leaderrun.errors import UsageError

IS_LEADER = Gauge("leaderrun_is_leader", "1 while this candidate leads the election", ["election"])
TERMS = Counter("leaderrun_terms", "Terms won (times elected)", ["election"])
CHILD_STARTS = Counter("leaderrun_child_starts", "Children started", ["election"])
CHILD_EXITS = Counter(
    "leaderrun_child_exits", "Children ended, by exit status", ["election", "status"]
)
RENEW_LATENCY = Histogram(
    "leaderrun_renew_latency_seconds",
    "Round trip of answered lease keep-alives / session requests",
    ["election"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
SINCE_RENEW = Gauge(
    "leaderrun_seconds_since_last_renew",
    "Seconds since the send time of the newest answered renewal",
    ["election"],
)
BACKEND_ERRORS = Counter("leaderrun_backend_errors", "Failed requests to the backend", ["election"])

_last_ack: dict[str, float] = {}


def renewed(election: str, sent_at: float) -> None:
    """Record an answered renewal sent at `sent_at` (monotonic)."""
    RENEW_LATENCY.labels(election).observe(time.monotonic() - sent_at)
    if election not in _last_ack:
        SINCE_RENEW.labels(election).set_function(
            lambda: time.monotonic() - _last_ack.get(election, time.monotonic())
        )
    _last_ack[election] = max(sent_at, _last_ack.get(election, sent_at))


def backend_error(election: str) -> None:
    BACKEND_ERRORS.labels(election).inc()


def serve(address: str) -> None:
    """Start the scrape endpoint, or fail with a usage error naming the address."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(
            f"--metrics-addr: {address!r} is not HOST:PORT; write it like 127.0.0.1:9464"
        )
    try:
        start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0")
    except OSError as exc:
        raise UsageError(f"--metrics-addr: cannot listen on {address}: {exc.strerror}") from None
