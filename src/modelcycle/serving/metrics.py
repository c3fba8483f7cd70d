"""Prometheus metrics of a model server, in a registry of its own (one per app).

With several uvicorn workers (`PROMETHEUS_MULTIPROC_DIR` set before the workers start),
prometheus-client keeps every series in memory-mapped files in that directory and GET
/metrics answers, from whichever worker, with the sum over all of them: counts stay exact.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

from modelcycle.serving.protocol import UVICORN_REFUSAL

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
    refused: Counter
    reloads: Counter
    loop_lag: Gauge

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
                "Served model version and exported file (fp32, int8) (value 1)",
                ["model", "alias", "version", "variant"],
                registry=r,
                multiprocess_mode="livemax",  # 1 while any live worker serves that version
            ),
            ready=Gauge(
                "modelcycle_ready",
                "1 when every model is loaded and warm",
                registry=r,
                multiprocess_mode="livemin",  # ready only when every live worker is
            ),
            refused=Counter(
                "modelcycle_refused_requests",
                "Requests uvicorn answered 503 without running the app: serve.max_connections "
                "open connections or requests in flight were reached (probes and scrapes pass)",
                registry=r,
            ),
            loop_lag=Gauge(
                "modelcycle_event_loop_lag_seconds",
                "How late the event loop runs what is due (most over its last 8 ticks of 5 ms): "
                "about how long a request waits before the app sees it; deadlines count it",
                registry=r,
                multiprocess_mode="livemax",  # the most-behind live worker
            ),
            reloads=Counter(
                "modelcycle_reloads",
                "Hot reloads after an alias moved: swapped in, or failed (the served version "
                "stays, and the next poll tries again)",
                ["model", "outcome"],
                registry=r,
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


class RefusalLog(logging.Filter):
    """Counts the 503 refusals over the connection limit; one line per period, not per refusal.

    Under a flood uvicorn logs a warning for every request it refuses, thousands a second,
    and none of them reaches the app or its metrics (nor do those the protocol writes
    itself, which log the same warning, `UVICORN_REFUSAL`). Installed on the "uvicorn.error"
    logger, this counts each in `counter`, lets the first through (saying what to change)
    and then one summary per `period` seconds, with the count since the last line.
    """

    def __init__(self, counter: Counter, period: float = 10.0) -> None:
        super().__init__()
        self.counter, self.period = counter, period
        self.unlogged = 0  # refusals since the last line that said so
        self.logged_at: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every other record; count a refusal and keep it only when a line is due."""
        if record.getMessage() != UVICORN_REFUSAL:
            return True
        self.counter.inc()
        self.unlogged += 1
        now = time.monotonic()
        if self.logged_at is not None and now - self.logged_at < self.period:
            return False
        record.msg, record.args = self.line(now), ()
        self.logged_at, self.unlogged = now, 0
        return True

    def line(self, now: float | None = None) -> str:
        """What the next line says of the refusals not logged yet."""
        if self.logged_at is None:
            return (
                "Refusing requests with 503: serve.max_connections open connections (or "
                "requests in flight) reached; raise it or add serve.workers if the load is "
                "expected. Further refusals are summed in one line per "
                f"{self.period:g} s and counted in modelcycle_refused_requests_total."
            )
        since = (now if now is not None else time.monotonic()) - self.logged_at
        return (
            f"Refused {self.unlogged} requests with 503 in the last {since:.0f} s "
            "(serve.max_connections reached)."
        )


@contextmanager
def refusals_counted(counter: Counter, period: float = 10.0) -> Iterator[RefusalLog]:
    """Count and summarise uvicorn's refusals (see `RefusalLog`) while inside.

    On the way out, a last line sums the refusals not logged yet.
    """
    uvicorn_log = logging.getLogger("uvicorn.error")
    refusals = RefusalLog(counter, period)
    uvicorn_log.addFilter(refusals)
    try:
        yield refusals
    finally:
        uvicorn_log.removeFilter(refusals)
        if refusals.unlogged:
            uvicorn_log.warning(refusals.line())
