"""Server metrics across workers: shared files summed, the live gauges of dead workers dropped.

Each simulated worker is this process under another pid (prometheus-client's own tests fake
the pid the same way); a finished child process gives a pid that is certainly dead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest, values
from prometheus_client.parser import text_string_to_metric_families

from modelcycle.serving.metrics import MULTIPROC_ENV, ServerMetrics


def samples(metrics: ServerMetrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    """What GET /metrics would render, by sample name."""
    text = generate_latest(metrics.exposed).decode()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def as_worker(pid: int, monkeypatch: pytest.MonkeyPatch) -> ServerMetrics:
    """The series of a worker with process id `pid`, writing to the shared directory."""
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: pid))
    return ServerMetrics.create()


def test_workers_sum_and_a_dead_workers_live_gauges_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    old = as_worker(int(dead.stdout), monkeypatch)
    old.requests.labels("/v1/models/{name}/predict", "200", "twins").inc(3)
    old.model_info.labels("twins", "champion", "1", "fp32").set(1)
    old.ready.set(0)  # it died while loading
    live = as_worker(os.getpid(), monkeypatch)
    live.requests.labels("/v1/models/{name}/predict", "200", "twins").inc(2)
    live.model_info.labels("twins", "champion", "2", "fp32").set(1)
    live.ready.set(1)

    found = samples(live)
    assert [v for _, v in found["modelcycle_requests_total"]] == [5.0], "counts of all workers"
    versions = [labels["version"] for labels, _ in found["modelcycle_model_info"]]
    assert versions == ["2"], "the dead worker's version should be gone"
    assert found["modelcycle_ready"] == [({}, 1.0)], "ready is the live workers' minimum"
    assert not list(tmp_path.glob(f"gauge_live*_{int(dead.stdout)}.db"))


def test_one_process_renders_its_own_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    metrics = ServerMetrics.create()
    observe = metrics.batch_observer("twins", lambda: 7)
    observe(4)
    found = samples(metrics)
    assert metrics.exposed is metrics.registry
    assert found["modelcycle_queue_depth"] == [({"model": "twins"}, 7.0)]
    assert found["modelcycle_batch_size_count"] == [({"model": "twins"}, 1.0)]


def test_queue_depth_is_written_when_a_batch_leaves_with_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    metrics = as_worker(os.getpid(), monkeypatch)
    waiting = [5]
    observe = metrics.batch_observer("twins", lambda: waiting[0])
    observe(8)
    waiting[0] = 0
    assert samples(metrics)["modelcycle_queue_depth"] == [({"model": "twins"}, 5.0)]
    observe(5)
    assert samples(metrics)["modelcycle_queue_depth"] == [({"model": "twins"}, 0.0)]


def test_uvicorn_refusals_are_counted_and_logged_once_per_period(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A flood of refusals gives one line per period, every one counted; other lines pass."""
    import logging

    from modelcycle.serving import metrics as module
    from modelcycle.serving.metrics import refusals_counted
    from modelcycle.serving.protocol import UVICORN_REFUSAL

    now = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    metrics, uvicorn_log = ServerMetrics.create(), logging.getLogger("uvicorn.error")
    caplog.set_level(logging.INFO, logger="uvicorn.error")
    with refusals_counted(metrics.refused, period=10.0):
        for _ in range(1000):
            uvicorn_log.warning(UVICORN_REFUSAL)
        uvicorn_log.info("Shutting down")
        now[0] += 12.0
        for _ in range(5):
            uvicorn_log.warning(UVICORN_REFUSAL)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines
    assert "serve.max_connections" in lines[0] and "raise it" in lines[0]
    assert lines[1] == "Shutting down"
    assert (
        lines[2]
        == "Refused 1000 requests with 503 in the last 12 s (serve.max_connections reached)."
    )
    assert lines[3].startswith("Refused 4 requests with 503")  # the rest, on the way out
    assert samples(metrics)["modelcycle_refused_requests_total"] == [({}, 1005.0)]
    uvicorn_log.warning(UVICORN_REFUSAL)  # the filter is gone: uvicorn's own line again
    assert caplog.records[-1].getMessage() == UVICORN_REFUSAL
