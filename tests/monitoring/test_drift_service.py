"""GET /v1/models/{name}/drift and the drift gauges, on the real app and real ONNX Runtime."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from modelcycle.monitoring.capture import CaptureStore
from modelcycle.monitoring.drift import DriftSettings, DriftSummary
from modelcycle.monitoring.drift_service import DriftService
from modelcycle.servable import read_manifest, read_reference
from modelcycle.serving.app import ServeSettings, create_app
from modelcycle.serving.loading import ServedModel

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


def test_drift_is_pending_before_the_first_check(
    client_and_service: tuple[TestClient, DriftService],
) -> None:
    client, _ = client_and_service
    response = client.get(DRIFT)
    assert response.status_code == 200
    body = DriftSummary.model_validate(response.json())
    assert body.status == "pending" and body.version == "1" and body.drift_detected is None


def test_a_shifted_window_is_reported_as_drift_with_gauges(
    client_and_service: tuple[TestClient, DriftService], served: ServedModel
) -> None:
    client, service = client_and_service
    _post_reference_rows(client, served, 10, scale=1.2)
    service.check_now()
    body = client.get(DRIFT).json()
    assert body["status"] == "too_few_captures" and body["n_current"] == 10
    assert "at least 30" in body["detail"]
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
    app = create_app(lambda: [served], ServeSettings(api_key="k"), store, drift=service)
    with TestClient(app) as client:
        assert client.get(DRIFT).status_code == 401
        assert client.get(DRIFT, headers={"Authorization": "Bearer k"}).status_code == 200
