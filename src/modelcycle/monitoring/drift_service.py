"""The model server's drift check: in a background thread on an interval, cached, exported.

`GET /v1/models/{name}/drift` answers from the cache and never computes: requests never wait
for a drift test. Each check tests the newest `window` captures of the served version against
its reference sample (computed once per version) and sets the drift gauges of /metrics.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import pandas as pd
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge

from modelcycle.monitoring.capture import CaptureStore
from modelcycle.monitoring.drift import DriftSettings, DriftSummary, Status, TooFewCapturesError
from modelcycle.monitoring.monitor import (
    SampleError,
    check_drift,
    served_reference,
    version_captures,
)
from modelcycle.serving.batching import StoppingError
from modelcycle.serving.loading import Runner, ServedModel

log = logging.getLogger(__name__)
Models = Callable[[], dict[str, ServedModel]]


@dataclass(frozen=True)
class DriftGauges:
    """The drift series of /metrics; labels are model names and the models' column names."""

    detected: Gauge
    share: Gauge
    p_value: Gauge
    captures: Gauge
    checks: Counter
    last_check: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> DriftGauges:
        """Declare the series in the server's registry.

        With several workers each runs its own checks on the shared capture store; a gauge
        shows the most recent check of any live worker.
        """
        latest: Final = "livemostrecent"
        return cls(
            detected=Gauge(
                "modelcycle_drift_detected", "1 when the last check found drift", ["model"],
                registry=registry, multiprocess_mode=latest,
            ),
            share=Gauge(
                "modelcycle_drift_share", "Share of tested columns that drift", ["model"],
                registry=registry, multiprocess_mode=latest,
            ),
            p_value=Gauge(
                "modelcycle_drift_p_value",
                "p-value per column (KS; class mix for a class column)",
                ["model", "feature"],
                registry=registry, multiprocess_mode=latest,
            ),
            captures=Gauge(
                "modelcycle_drift_captures", "Captures in the last check", ["model"],
                registry=registry, multiprocess_mode=latest,
            ),
            checks=Counter(
                "modelcycle_drift_checks", "Drift checks by outcome", ["model", "status"],
                registry=registry,
            ),
            last_check=Gauge(
                "modelcycle_drift_last_check_timestamp_seconds", "When drift was last checked",
                ["model"], registry=registry, multiprocess_mode=latest,
            ),
        )  # fmt: skip


class DriftService:
    """Checks each served model's drift every `interval_seconds` and keeps the last result.

    Args:
        capture: The server's capture store.
        settings: Alpha and the fewest captures a test runs on.
        interval_seconds: Time between checks; 0 checks only when `check_now` is called.
        window: Newest captures of the served version each check tests.
    """

    def __init__(
        self,
        capture: CaptureStore,
        settings: DriftSettings,
        interval_seconds: float,
        window: int,
    ) -> None:
        self.capture, self.settings = capture, settings
        self.interval_seconds, self.window = interval_seconds, window
        self._models: Models = dict
        self._cache: dict[str, DriftSummary] = {}
        self._references: dict[tuple[str, str], pd.DataFrame] = {}
        self._unreadable: dict[tuple[str, str], SampleError] = {}  # said once, not retried
        self._gauges: DriftGauges | None = None
        self._published: dict[str, set[str]] = {}  # each model's p-value series now set
        self._between: Callable[[ServedModel], Runner] | None = None
        self._computing = threading.Lock()  # one reference at a time, each computed once
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(
        self,
        models: Models,
        registry: CollectorRegistry,
        between: Callable[[ServedModel], Runner] | None = None,
    ) -> None:
        """Begin checking the models `models()` returns; gauges go into `registry`.

        `between(served)`: how to call a served model from now on (a server passes one that
        runs between its live batches) when a check needs a reference not yet computed.
        """
        self._models, self._between = models, between
        self._gauges = DriftGauges.create(registry)
        if self.interval_seconds > 0:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="drift", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the background thread (a check in progress finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def prepare(self, served: ServedModel) -> None:
        """Compute `served`'s reference now, not in its first check.

        The reference runs the model over the version's reference sample (400 images for an
        image model): at full speed before `start` (a server starting, before /readyz), and
        through `start`'s `between` after it (a hot reload, between the live batches). A
        failure is logged, and the checks try again. With no background checks
        (`interval_seconds` 0) nothing is computed until `check_now`.
        """
        if self.interval_seconds <= 0:
            return
        key = (served.name, served.version)
        try:
            self._reference(served)
        except SampleError:  # said in one line by `_reference`
            pass
        except StoppingError:
            log.info("Drift reference of %s v%s left unfinished: stopping", *key)
        except Exception:  # drift monitoring must never stop a model from serving
            log.exception("Drift reference of %s v%s failed", *key)

    def check_now(self) -> None:
        """Check every served model once and cache the results."""
        for name, served in list(self._models().items()):
            summary = self._check(served)
            self._cache[name] = summary
            self._publish(summary)

    def summary(self, name: str) -> DriftSummary:
        """The last result for a served model, or a pending one before the first check."""
        cached = self._cache.get(name)
        served = self._models().get(name)
        if cached is not None and served is not None and cached.version == served.version:
            return cached
        if self.interval_seconds > 0:
            status: Status = "pending"
            detail = (
                f"no drift check of this version yet; checks run every {self.interval_seconds:g} s"
            )
        else:
            status, detail = (
                "off",
                (
                    "This server runs no drift checks (monitor.interval_seconds=0). Start it with "
                    "monitor.interval_seconds above 0, or run `modelcycle monitor "
                    f"{name}@ALIAS` to check its captured requests."
                ),
            )
        return DriftSummary(
            model=name,
            version=None if served is None else served.version,
            variant=None if served is None else served.variant,
            status=status,
            detail=detail,
            alpha=self.settings.alpha,
        )

    def router(self, prefix: str, dependencies: Sequence[Any] = ()) -> APIRouter:
        """The drift route under `prefix` (its own prefix: the route label of /metrics)."""
        router = APIRouter(prefix=prefix, dependencies=list(dependencies))

        @router.get(
            "/models/{name}/drift",
            response_model=DriftSummary,
            responses={404: {"description": "Unknown model"}},
        )
        async def drift(name: str) -> DriftSummary | JSONResponse:
            """Drift of a served model's recent requests against its reference (cached)."""
            models = self._models()
            if name not in models:
                served = ", ".join(sorted(models)) or "none"
                detail = f"Unknown model {name[:100]!r}; served models: {served}."
                return JSONResponse({"detail": detail}, status_code=404)
            return self.summary(name)

        return router

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_now()
            except StoppingError:  # the server stops: a reference was left unfinished
                return
            except Exception:  # a failed check must not end monitoring; the next one retries
                log.exception("Drift check failed")
            self._stop.wait(self.interval_seconds)

    def _reference(self, served: ServedModel) -> pd.DataFrame:
        """The version's reference, computed once (other versions of it not served are dropped).

        A check that needs it while `prepare` computes it waits for that result.
        """
        key = (served.name, served.version)
        with self._computing:
            if key in self._unreadable:
                raise self._unreadable[key]
            if key not in self._references:
                run = None if self._between is None else self._between(served)
                began = time.perf_counter()
                try:
                    self._references[key] = reference = served_reference(served, run)
                except SampleError as err:  # the file stays damaged: checks answer, not retry
                    log.error("No drift checks of %s v%s: %s", *key, err)
                    self._unreadable[key] = err
                    raise
                took = time.perf_counter() - began
                log.info(
                    "Drift reference of %s v%s ready: %d rows in %.1f s", *key, len(reference), took
                )
                live = {(m.name, m.version) for m in self._models().values()} | {key}
                for old in [k for k in self._references if k[0] == served.name and k not in live]:
                    self._references.pop(old, None)
            return self._references[key]

    def _check(self, served: ServedModel) -> DriftSummary:
        try:
            reference = self._reference(served)
        except SampleError as err:
            return self._no_verdict(served, "no_reference", str(err))
        captures = version_captures(self.capture, served, None, self.window)
        try:
            return check_drift(served, reference, captures, self.settings).summary
        except TooFewCapturesError as err:
            return self._no_verdict(
                served,
                "too_few_captures",
                (
                    f"{served.name} version {served.version}: {err.found} captured requests "
                    f"(of the newest monitor.window={self.window}), at least {err.needed} are "
                    "needed to test for drift; traffic marked with X-Capture-Source, such as a "
                    "load test's, does not count. The next check counts again after more "
                    "requests; monitor.min_captures lowers the need."
                ),
                n_reference=len(reference),
                n_current=len(captures),
            )

    def _no_verdict(
        self,
        served: ServedModel,
        status: Literal["no_reference", "too_few_captures"],
        detail: str,
        n_reference: int = 0,
        n_current: int = 0,
    ) -> DriftSummary:
        """A check of `served` that gave no verdict, and why (`status`, `detail`)."""
        return DriftSummary(
            model=served.name,
            version=served.version,
            variant=served.variant,
            status=status,
            detail=detail,
            computed_at=time.time(),
            n_reference=n_reference,
            n_current=n_current,
            alpha=self.settings.alpha,
        )

    def _publish(self, summary: DriftSummary) -> None:
        if self._gauges is None:
            return
        g, model = self._gauges, summary.model
        g.checks.labels(model, summary.status).inc()
        g.captures.labels(model).set(summary.n_current)
        g.last_check.labels(model).set_to_current_time()
        # A check with no verdict (too few captures of a version just swapped in) and a column
        # the last check had and this one lacks read NaN, not the last verdict: a drifted
        # version's 1 would keep the drift alert firing for its successor. (Series cannot be
        # removed in multi-process mode; NaN == 1 is false, and Grafana draws a gap.)
        verdict = summary.drift_detected
        g.detected.labels(model).set(math.nan if verdict is None else int(verdict))
        g.share.labels(model).set(math.nan if verdict is None else summary.drifted_share or 0.0)
        tested = {
            f.name: f.p_value
            for f in summary.features
            if verdict is not None and f.p_value is not None
        }
        for name in self._published.get(model, set()) - tested.keys():
            g.p_value.labels(model, name).set(math.nan)
        for name, p in tested.items():
            g.p_value.labels(model, name).set(p)
        self._published[model] = set(tested)
