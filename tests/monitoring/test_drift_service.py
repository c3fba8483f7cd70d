"""GET /v1/models/{name}/drift and the drift gauges, on the real app and real ONNX Runtime."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from modelcycle.monitoring.capture import CaptureStore
from modelcycle.monitoring.drift import DriftSettings, DriftSummary
from modelcycle.monitoring.drift_service import DriftService
from modelcycle.servable import REFERENCE, read_manifest, read_reference
from modelcycle.serving.app import ServeSettings, create_app
from modelcycle.serving.loading import Runner, ServedModel

DRIFT = "/v1/models/twins/drift"
WAIT_SECONDS = 20.0


def _app(served: ServedModel, tmp_path: Path, interval: float) -> tuple[TestClient, DriftService]:
    store = CaptureStore(tmp_path / "capture.db")
    service = DriftService(store, DriftSettings(min_captures=30), interval, window=30)
    return TestClient(create_app(lambda: [served], ServeSettings(), store, drift=service)), service


def _post_reference_rows(client: TestClient, served: ServedModel, n: int, scale: float) -> None:
    assert served.directory is not None
    rows = read_reference(served.directory, read_manifest(served.directory))
    assert rows is not None
    rows = [rows[0] * scale, rows[1], rows[2] * scale, rows[3]]
    for i in np.random.default_rng(1).choice(len(rows[0]), size=n):
        body = served.adapter.request_of(rows, int(i))  # type: ignore[attr-defined]
        assert client.post("/v1/models/twins/predict", json=body).status_code == 200


def _metrics(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    families = text_string_to_metric_families(client.get("/metrics").text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


@pytest.fixture
def client_and_service(
    served: ServedModel, tmp_path: Path
) -> Iterator[tuple[TestClient, DriftService]]:
    client, service = _app(served, tmp_path, interval=0)  # checks only on check_now()
    with client:
        yield client, service


def test_drift_is_pending_until_the_first_check_ends(
    served: ServedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, service = _app(served, tmp_path, interval=3600)
    checking, release = threading.Event(), threading.Event()

    def first_check() -> None:  # the background thread's first check, still running
        checking.set()
        release.wait(WAIT_SECONDS)

    monkeypatch.setattr(service, "check_now", first_check)
    with client:
        assert checking.wait(WAIT_SECONDS)
        response = client.get(DRIFT)
        release.set()
    assert response.status_code == 200
    body = DriftSummary.model_validate(response.json())
    assert body.status == "pending" and body.version == "1" and body.drift_detected is None
    assert body.variant == "fp32"  # null until the first full check
    assert "checks run every 3600 s" in body.detail


def test_a_server_without_background_checks_says_they_are_off(
    client_and_service: tuple[TestClient, DriftService],
) -> None:
    client, _ = client_and_service  # monitor.interval_seconds=0
    body = DriftSummary.model_validate(client.get(DRIFT).json())
    assert body.status == "off" and body.version == "1" and body.drift_detected is None
    assert "monitor.interval_seconds=0" in body.detail
    assert "modelcycle monitor twins@ALIAS" in body.detail


def test_a_shifted_window_is_reported_as_drift_with_gauges(
    client_and_service: tuple[TestClient, DriftService], served: ServedModel
) -> None:
    client, service = client_and_service
    _post_reference_rows(client, served, 10, scale=1.2)
    service.check_now()
    body = client.get(DRIFT).json()
    assert body["status"] == "too_few_captures" and body["n_current"] == 10
    assert body["variant"] == "fp32" and body["computed_at"] is not None
    # the server's own settings, not the command line's --since/--last
    assert "10 captured requests (of the newest monitor.window=30), at least 30" in body["detail"]
    assert "--since" not in body["detail"] and "monitor.min_captures" in body["detail"]
    _post_reference_rows(client, served, 30, scale=1.2)
    service.check_now()
    body = DriftSummary.model_validate(client.get(DRIFT).json())
    assert body.status == "drift" and body.drift_detected and body.n_current == 30
    assert "level" in {f.name for f in body.features if f.drifted}
    series = _metrics(client)
    assert series[("modelcycle_drift_detected", (("model", "twins"),))] == 1.0
    assert 0 < series[("modelcycle_drift_share", (("model", "twins"),))] <= 1
    level = ("modelcycle_drift_p_value", (("feature", "level"), ("model", "twins")))
    assert series[level] < body.threshold  # type: ignore[operator]
    checks = ("modelcycle_drift_checks_total", (("model", "twins"), ("status", "drift")))
    assert series[checks] == 1.0
    route = (("model", "twins"), ("route", "/v1/models/{name}/drift"), ("status", "200"))
    assert series[("modelcycle_requests_total", route)] >= 2


def test_unknown_model_is_404_and_the_route_is_documented(
    client_and_service: tuple[TestClient, DriftService],
) -> None:
    client, _ = client_and_service
    response = client.get("/v1/models/nope/drift")
    assert response.status_code == 404 and "twins" in response.json()["detail"]
    document = client.get("/openapi.json").json()
    operation = document["paths"]["/v1/models/{name}/drift"]["get"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/DriftSummary")
    assert "DriftSummary" in document["components"]["schemas"]


def test_the_background_thread_checks_on_its_interval(served: ServedModel, tmp_path: Path) -> None:
    client, service = _app(served, tmp_path, interval=0.2)
    with client:
        _post_reference_rows(client, served, 30, scale=1.0)
        deadline = time.monotonic() + WAIT_SECONDS
        status = "pending"
        while time.monotonic() < deadline:
            status = client.get(DRIFT).json()["status"]
            if status in ("drift", "no_drift"):
                break
            time.sleep(0.1)
        assert status == "no_drift", f"no finished drift check within {WAIT_SECONDS} s: {status}"
    assert service._thread is not None and not service._thread.is_alive()  # stopped with the app


def test_the_drift_route_needs_the_api_key_when_one_is_set(
    served: ServedModel, tmp_path: Path
) -> None:
    store = CaptureStore(tmp_path / "capture.db")
    service = DriftService(store, DriftSettings(), interval_seconds=0, window=30)
    key = "drift-route-key-0123"
    app = create_app(lambda: [served], ServeSettings(api_key=key), store, drift=service)
    with TestClient(app) as client:
        assert client.get(DRIFT).status_code == 401
        assert client.get(DRIFT, headers={"Authorization": f"Bearer {key}"}).status_code == 200


def _count_references(monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> list[str]:
    """Record each version whose reference is computed (or make computing it fail)."""
    from modelcycle.monitoring import drift_service

    computed: list[str] = []
    real = drift_service.served_reference

    def counted(served: ServedModel, run: Runner | None = None) -> pd.DataFrame:
        computed.append(served.version)
        if fail:
            raise RuntimeError("reference sample unreadable")
        return real(served, run)

    monkeypatch.setattr(drift_service, "served_reference", counted)
    return computed


def test_the_reference_is_computed_while_the_model_loads_not_in_a_check(
    served: ServedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    computed = _count_references(monkeypatch)
    client, service = _app(served, tmp_path, interval=3600)  # one check, at the start
    with client:
        assert computed == ["1"]  # before readiness, and the checks reuse it
        _post_reference_rows(client, served, 30, scale=1.0)
        service.check_now()
        assert client.get(DRIFT).json()["status"] == "no_drift"
    assert computed == ["1"]


def test_a_reference_that_fails_leaves_the_model_serving_and_the_checks_retry(
    served: ServedModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    computed = _count_references(monkeypatch, fail=True)
    client, service = _app(served, tmp_path, interval=3600)
    with client:
        assert client.get("/readyz").status_code == 200
        _post_reference_rows(client, served, 3, scale=1.0)
        assert "Drift reference of twins v1 failed" in caplog.text
        with pytest.raises(RuntimeError, match="unreadable"):
            service.check_now()
    assert len(computed) >= 2 and set(computed) == {"1"}  # tried on loading, and again


def test_with_no_background_checks_nothing_is_computed_on_loading(
    served: ServedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    computed = _count_references(monkeypatch)
    client, service = _app(served, tmp_path, interval=0)  # checks only on check_now()
    with client:
        assert computed == []
        service.check_now()
        assert computed == ["1"]


def test_a_hot_reload_swaps_then_computes_the_new_versions_reference(
    served: ServedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    computed = _count_references(monkeypatch)
    v2 = replace(served, version="2")

    def reload(current: ServedModel) -> ServedModel | None:
        return v2 if current.version == "1" else None

    store = CaptureStore(tmp_path / "capture.db")
    service = DriftService(store, DriftSettings(min_captures=30), 3600, window=30)
    prepared: list[tuple[str, dict[str, str]]] = []  # (version, what was served meanwhile)
    real_prepare = service.prepare

    def prepare(model: ServedModel) -> None:
        real_prepare(model)
        prepared.append((model.version, {n: m.version for n, m in service._models().items()}))

    monkeypatch.setattr(service, "prepare", prepare)
    settings = ServeSettings(reload_seconds=0.05)
    with TestClient(create_app(lambda: [served], settings, store, reload, service)) as client:
        deadline = time.monotonic() + WAIT_SECONDS
        version = "1"
        while time.monotonic() < deadline and version != "2":
            time.sleep(0.05)
            version = client.get("/v1/models").json()["models"][0]["version"]
        assert version == "2"
        while time.monotonic() < deadline and len(prepared) < 2:
            time.sleep(0.05)
        assert prepared == [("1", {}), ("2", {"twins": "2"})]  # v2's once it served
        _post_reference_rows(client, v2, 30, scale=1.0)
        service.check_now()
        assert client.get(DRIFT).json()["version"] == "2"
    assert computed == ["1", "2"]  # the check of version 2 used the reference made on loading


class _Recorded:
    """A session that takes `per_row` seconds more a row and records each run: its version,
    start, end and thread (live batches run in a `batch-` thread)."""

    def __init__(
        self,
        session: Any,
        tag: str,
        calls: list[tuple[str, float, float, str]],
        per_row: float = 0.0,
    ) -> None:
        self.session, self.tag, self.calls, self.per_row = session, tag, calls, per_row

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        began = time.perf_counter()
        time.sleep(self.per_row * len(next(iter(feeds.values()))))
        outputs = self.session.run(names, feeds)
        thread = threading.current_thread().name
        self.calls.append((self.tag, began, time.perf_counter(), thread))
        return list(outputs)


def test_a_hot_reload_warms_and_prepares_between_the_live_batches(
    served: ServedModel, tmp_path: Path
) -> None:
    calls: list[tuple[str, float, float, str]] = []  # every model call
    v1 = replace(served, session=_Recorded(served.session, "1", calls))
    v2 = replace(served, version="2", session=_Recorded(served.session, "2", calls, 0.001))

    def reload(current: ServedModel) -> ServedModel | None:
        return v2 if current.version == "1" else None

    store = CaptureStore(tmp_path / "capture.db")
    service = DriftService(store, DriftSettings(min_captures=30), 3600, window=30)
    settings = ServeSettings(reload_seconds=0.05, threads=2)
    with TestClient(create_app(lambda: [v1], settings, store, reload, service)) as client:
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline and ("twins", "2") not in service._references:
            _post_reference_rows(client, served, 1, scale=1.0)  # live traffic all along
        assert client.get("/v1/models").json()["models"][0]["version"] == "2"
        assert ("twins", "2") in service._references
    live = [(a, b) for _, a, b, thread in calls if thread.startswith("batch")]
    other = [(tag, a, b) for tag, a, b, thread in calls if not thread.startswith("batch")]
    for _, a, b in other:
        assert all(end <= a or start >= b for start, end in live), "a batch ran beside work"
    v2_work = [(a, b) for tag, a, b in other if tag == "2"]
    assert len(v2_work) > 5  # its warm-up and its reference, in pieces
    assert any(v2_work[0][0] < start < v2_work[-1][1] for start, _ in live)  # served meanwhile


def test_a_stopping_server_does_not_wait_for_a_reload_reference(
    served: ServedModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert served.directory is not None
    reference = read_reference(served.directory, read_manifest(served.directory))
    assert reference is not None and len(reference[0]) == 36
    calls: list[tuple[str, float, float, str]] = []
    caplog.set_level(logging.INFO, logger="modelcycle.monitoring.drift_service")
    per_row = 0.15  # its warm-up (9 rows) takes 1.4 s, its reference (36 rows) 5.4 s
    slow = replace(served, version="2", session=_Recorded(served.session, "2", calls, per_row))

    def reload(current: ServedModel) -> ServedModel | None:
        return slow if current.version == "1" else None

    store = CaptureStore(tmp_path / "capture.db")
    service = DriftService(store, DriftSettings(min_captures=30), 3600, window=30)
    settings = ServeSettings(reload_seconds=0.05)
    with TestClient(create_app(lambda: [served], settings, store, reload, service)) as client:
        deadline, version = time.monotonic() + WAIT_SECONDS, "1"
        while time.monotonic() < deadline and version != "2":
            time.sleep(0.05)
            version = client.get("/v1/models").json()["models"][0]["version"]
        assert version == "2"
        time.sleep(0.5)  # its reference is being computed
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 3.0  # not the 5 s or more the reference has left
    assert ("twins", "2") not in service._references
    assert "Drift reference of twins v2 left unfinished: stopping" in caplog.text


def test_a_new_version_with_too_few_captures_clears_the_last_versions_drift_gauges(
    served: ServedModel, tmp_path: Path
) -> None:
    """A drifted v1's gauges would keep the drift alert firing for v2 (its own verdict pending)."""
    swap = threading.Event()
    v2 = replace(served, version="2")

    def reload(current: ServedModel) -> ServedModel | None:
        return v2 if current.version == "1" and swap.is_set() else None

    store = CaptureStore(tmp_path / "capture.db")
    service = DriftService(store, DriftSettings(min_captures=30), 0, window=30)
    settings = ServeSettings(reload_seconds=0.05)
    detected = ("modelcycle_drift_detected", (("model", "twins"),))
    share = ("modelcycle_drift_share", (("model", "twins"),))
    level = ("modelcycle_drift_p_value", (("feature", "level"), ("model", "twins")))
    with TestClient(create_app(lambda: [served], settings, store, reload, service)) as client:
        _post_reference_rows(client, served, 30, scale=1.2)
        service.check_now()
        series = _metrics(client)
        assert series[detected] == 1.0 and series[share] > 0 and series[level] < 0.05
        swap.set()
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline and client.get(DRIFT).json()["version"] != "2":
            time.sleep(0.05)
        service.check_now()
        assert client.get(DRIFT).json()["status"] == "too_few_captures"
        series = _metrics(client)
        assert np.isnan(series[detected]) and np.isnan(series[share]) and np.isnan(series[level])
        _post_reference_rows(client, v2, 30, scale=1.0)
        service.check_now()
        series = _metrics(client)
        assert series[detected] == 0.0 and series[share] == 0.0 and series[level] > 0.01


def test_a_cut_short_reference_is_said_once_and_the_drift_status_says_why(
    served: ServedModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Each check (and the start) logged a full traceback, and the status stayed "pending".
    assert served.directory is not None
    copy = Path(shutil.copytree(served.directory, tmp_path / "model"))
    reference = copy / REFERENCE
    reference.write_bytes(reference.read_bytes()[:100])  # a kill while it was written
    damaged = replace(served, directory=copy)
    client, service = _app(damaged, tmp_path, interval=3600)
    with caplog.at_level(logging.INFO), client:
        assert client.get("/readyz").status_code == 200
        _post_reference_rows(client, served, 3, scale=1.0)  # the model still serves
        service.check_now()
        service.check_now()
        body = client.get(DRIFT).json()
        series = _metrics(client)
    assert body["status"] == "no_reference" and body["drift_detected"] is None
    assert f"{reference}: missing, cut short or changed" in body["detail"]
    assert "copies the file anew from the registry" in body["detail"]
    said = [r for r in caplog.records if "No drift checks of twins v1" in r.getMessage()]
    assert len(said) == 1 and said[0].exc_info is None, caplog.text
    assert "Traceback" not in caplog.text and "failed" not in caplog.text
    assert np.isnan(series[("modelcycle_drift_detected", (("model", "twins"),))])
    checks = ("modelcycle_drift_checks_total", (("model", "twins"), ("status", "no_reference")))
    assert series[checks] >= 2
