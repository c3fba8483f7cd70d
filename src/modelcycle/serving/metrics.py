"""Prometheus metrics of a model server, in a registry of its own (one per app).

With several uvicorn workers (`PROMETHEUS_MULTIPROC_DIR` set before the workers start),
prometheus-client keeps every series in memory-mapped files in that directory and GET
/metrics answers, from whichever worker, with the sum over all of them: counts stay exact.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db$")


def multiprocess_dir() -> Path | None:
    """The shared metrics directory of a multi-worker server, or None in one process."""
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


class LiveWorkersCollector:
    """Sums every worker's files, after dropping the live gauges of workers that died.

    uvicorn restarts a dead worker under a new pid; without the clean-up its last
    `modelcycle_ready` or queue depth would count forever. Counters and histograms of a
    dead worker stay: the requests it answered did happen.
    """

    def __init__(self, directory: Path) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self.directory = directory
        self.collector = MultiProcessCollector(None, str(directory))

    def collect(self) -> Iterable[Metric]:
        """Reap dead workers, then yield the merged series."""
        from prometheus_client.multiprocess import mark_process_dead

        for pid in {int(m.group(1)) for m in map(_LIVE_FILE.search, self._files()) if m}:
            if not _alive(pid):
                mark_process_dead(pid, str(self.directory))
        return self.collector.collect()

    def _files(self) -> list[str]:
        return [p.name for p in self.directory.glob("gauge_live*.db")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class ServerMetrics:
    """The server's series; labels stay bounded (route templates, model names, status codes).

    Attributes:
        registry: Where series are declared (more can be added, e.g. drift gauges).
        exposed: What GET /metrics renders: `registry` in one process, the merged files of
            every worker with several.
    """

    registry: CollectorRegistry
    exposed: CollectorRegistry
    requests: Counter
    latency: Histogram
    batch_size: Histogram
    queue_depth: Gauge
    model_info: Gauge
    ready: Gauge

    @classmethod
    def create(cls) -> ServerMetrics:
        """A fresh registry with every series declared; multi-worker when the env says so."""
        r = CollectorRegistry()
        directory = multiprocess_dir()
        exposed = r
        if directory is not None:
            # The series still write to the shared files; only the merged view is rendered,
            # or each would appear twice (this worker's value and the sum).
            exposed = CollectorRegistry()
            exposed.register(LiveWorkersCollector(directory))
        return cls(
            registry=r,
            exposed=exposed,
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
                "modelcycle_queue_depth",
                "Requests waiting for a batch",
                ["model"],
                registry=r,
                multiprocess_mode="livesum",  # waiting requests of all live workers
            ),
            model_info=Gauge(
                "modelcycle_model_info",
                "Served model version (value 1)",
                ["model", "alias", "version"],
                registry=r,
                multiprocess_mode="livemax",  # 1 while any live worker serves that version
            ),
            ready=Gauge(
                "modelcycle_ready",
                "1 when every model is loaded and warm",
                registry=r,
                multiprocess_mode="livemin",  # ready only when every live worker is
            ),
        )

    def batch_observer(self, model: str, depth: Callable[[], int]) -> Callable[[int], None]:
        """Track `model`'s queue depth; the returned callable records each batch's size.

        In one process the gauge reads `depth()` at scrape time. Across workers a scrape
        reaches one worker only, so each worker writes its depth whenever a batch leaves.
        """
        gauge, sizes = self.queue_depth.labels(model), self.batch_size.labels(model)
        if multiprocess_dir() is None:
            gauge.set_function(depth)
            return sizes.observe

        def observe(size: int) -> None:
            sizes.observe(size)
            gauge.set(depth())

        return observe
