"""Prometheus metrics of a model server, in a registry of its own (one per app)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class ServerMetrics:
    """The server's series; labels stay bounded (route templates, model names, status codes)."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    batch_size: Histogram
    queue_depth: Gauge
    model_info: Gauge
    ready: Gauge

    @classmethod
    def create(cls) -> ServerMetrics:
        """A fresh registry with every series declared."""
        r = CollectorRegistry()
        return cls(
            registry=r,
            requests=Counter(
                "modelcycle_requests", "HTTP requests", ["route", "status", "model"], registry=r
            ),
            latency=Histogram(
                "modelcycle_request_duration_seconds",
                "Request latency",
                ["route", "model"],
                buckets=LATENCY_BUCKETS,
                registry=r,
            ),
            batch_size=Histogram(
                "modelcycle_batch_size",
                "Requests per model call",
                ["model"],
                buckets=BATCH_BUCKETS,
                registry=r,
            ),
            queue_depth=Gauge(
                "modelcycle_queue_depth", "Requests waiting for a batch", ["model"], registry=r
            ),
            model_info=Gauge(
                "modelcycle_model_info",
                "Served model version (value 1)",
                ["model", "alias", "version"],
                registry=r,
            ),
            ready=Gauge("modelcycle_ready", "1 when every model is loaded and warm", registry=r),
        )
