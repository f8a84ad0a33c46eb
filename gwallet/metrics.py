"""Prometheus metrics: requests by route template, method and status; the ledger queue depth.

Labels are bounded: the route is the *template* (``/v1/merchant/payments/{payment_id}``) or
``unmatched``, the method one of the HTTP methods or ``other``, the status a number.

Several worker processes: ``gwallet serve --workers N`` (N > 1) points
``PROMETHEUS_MULTIPROC_DIR`` at an emptied folder under the data directory *before* the
workers start, because prometheus-client chooses its storage when it is first imported. Each
worker then writes its values to files there and ``/metrics``, whichever worker answers it,
adds up all workers' files. A single process keeps its values in memory, in a registry of its
own per app (tests build many apps in one process).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "MULTIPROC_ENV"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Seconds; from a cached read (1 ms) to the request timeout (10 s).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def multiprocess_mode() -> bool:
    """True when prometheus-client was imported with PROMETHEUS_MULTIPROC_DIR set."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = multiprocess_mode()
        # In multiprocess mode values go to files whatever the registry; registering nowhere
        # avoids clashes when one process builds several apps.
        self._registry = None if self.multiprocess else CollectorRegistry()
        labels = ("method", "route", "status")
        self.requests = Counter(
            "gwallet_http_requests",
            "HTTP requests answered.",
            labels,
            registry=self._registry,
        )
        self.request_duration = Histogram(
            "gwallet_http_request_duration_seconds",
            "Time from the request's arrival to the end of its response.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self._registry,
        )
        self.ledger_queue_depth = Gauge(
            "gwallet_ledger_queue_depth_transfers",
            "Transfers waiting in the ledger engine's queue (summed over live workers).",
            registry=self._registry,
            multiprocess_mode="livesum",
        )
        # Admission control (gwallet/admission.py).
        self.admission_refusals = Counter(
            "gwallet_admission_refusals",
            "Requests refused at once with 503 overloaded (queue_full, queue_timeout) or "
            "database_busy (pool_timeout).",
            ("reason",),
            registry=self._registry,
        )
        self.admission_in_flight = Gauge(
            "gwallet_admission_in_flight_requests",
            "Requests admitted and running (summed over live workers).",
            registry=self._registry,
            multiprocess_mode="livesum",
        )
        self.admission_queued = Gauge(
            "gwallet_admission_queued_requests",
            "Requests waiting for admission (summed over live workers).",
            registry=self._registry,
            multiprocess_mode="livesum",
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        labels = (method if method in _METHODS else "other", route, str(status))
        self.requests.labels(*labels).inc()
        self.request_duration.labels(*labels).observe(seconds)

    def exposition(self) -> bytes:
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        assert self._registry is not None
        return generate_latest(self._registry)

    def close(self) -> None:
        """At worker shutdown: drop this process's live gauges from the shared folder."""
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())
