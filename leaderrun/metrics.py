"""Prometheus metrics for alerting on leaderrun (`--metrics-addr HOST:PORT`).

Served from the worker process, which is where the lease and the child live. Every series
carries the election name. Without `--metrics-addr` nothing is counted and prometheus_client
is never imported: `leaderrun -- true` must start fast, and the functions below are then
no-ops (nobody could read the numbers anyway).
"""

from __future__ import annotations

import time
from typing import Any

from leaderrun.errors import UsageError

RENEW_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Registry:
    """The series, created when serving starts."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.is_leader = Gauge(
            "leaderrun_is_leader", "1 while this candidate leads the election", ["election"]
        )
        self.terms = Counter("leaderrun_terms", "Terms won (times elected)", ["election"])
        self.child_starts = Counter("leaderrun_child_starts", "Children started", ["election"])
        self.child_exits = Counter(
            "leaderrun_child_exits", "Children ended, by exit status", ["election", "status"]
        )
        self.renew_latency = Histogram(
            "leaderrun_renew_latency_seconds",
            "Round trip of answered lease keep-alives / session requests",
            ["election"],
            buckets=RENEW_BUCKETS,
        )
        self.since_renew = Gauge(
            "leaderrun_seconds_since_last_renew",
            "Seconds since the send time of the newest answered renewal",
            ["election"],
        )
        self.backend_errors = Counter(
            "leaderrun_backend_errors", "Failed requests to the backend", ["election"]
        )
        self.last_ack: dict[str, float] = {}


_registry: Registry | None = None


def set_leader(election: str, leading: bool) -> None:
    if (r := _registry) is not None:
        r.is_leader.labels(election).set(1 if leading else 0)
        if leading:
            r.terms.labels(election).inc()


def child_started(election: str) -> None:
    if (r := _registry) is not None:
        r.child_starts.labels(election).inc()


def child_exited(election: str, status: int) -> None:
    if (r := _registry) is not None:
        r.child_exits.labels(election, str(status)).inc()


def renewed(election: str, sent_at: float) -> None:
    """Record an answered renewal sent at `sent_at` (monotonic)."""
    if (r := _registry) is None:
        return
    r.renew_latency.labels(election).observe(time.monotonic() - sent_at)
    if election not in r.last_ack:
        last_ack = r.last_ack
        r.since_renew.labels(election).set_function(
            lambda: time.monotonic() - last_ack.get(election, time.monotonic())
        )
    r.last_ack[election] = max(sent_at, r.last_ack.get(election, sent_at))


def backend_error(election: str) -> None:
    if (r := _registry) is not None:
        r.backend_errors.labels(election).inc()


def serve(address: str) -> None:
    """Start the scrape endpoint, or fail with a usage error naming the address."""
    global _registry
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(
            f"--metrics-addr: {address!r} is not HOST:PORT; write it like 127.0.0.1:9464"
        )
    from prometheus_client import start_http_server

    if _registry is None:
        _registry = Registry()
        _export_dropped_log_lines()
    try:
        start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0")
    except OSError as exc:
        raise UsageError(f"--metrics-addr: cannot listen on {address}: {exc.strerror}") from None


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
