"""`modelcycle monitor` on a real registered, exported model with captured requests.

Requests go through the real app (TestClient, real ONNX Runtime) into a real capture store;
each test has its own workspace (captures, report) and shares the registry of one model.
Unshifted requests are reference rows; shifted ones are the same rows with every measure
scaled by 1.2 (a scanner/site offset).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from modelcycle.cli import app
from modelcycle.monitoring.capture import CaptureStore
from modelcycle.monitoring.drift_report import evidently_drift_detected, evidently_p_values
from modelcycle.monitoring.monitor import served_reference
from modelcycle.servable import read_manifest, read_reference
from modelcycle.serving.app import ServeSettings, create_app
from modelcycle.serving.loading import ServedModel, VariantChoice, load_served
from serving_fixtures import ServedWorkspace

runner = CliRunner()
N_REQUESTS = 30


def _reference_rows(served: ServedModel) -> list[np.ndarray]:
    assert served.directory is not None
    rows = read_reference(served.directory, read_manifest(served.directory))
    assert rows is not None, "the twins model is saved with a reference sample"
    return rows


def _send(served: ServedModel, workspace: Path, n: int, scale: float = 1.0) -> None:
    """Post `n` reference rows (measures times `scale`) to the real app, captured."""
    rows = _reference_rows(served)
    picks = np.random.default_rng(0).choice(len(rows[0]), size=n, replace=n > len(rows[0]))
    shifted = [rows[0] * scale, rows[1], rows[2] * scale, rows[3]]
    store = CaptureStore(workspace / "capture.db")
    with TestClient(create_app(lambda: [served], ServeSettings(), store)) as client:
        for i in picks:
            body = served.adapter.request_of(shifted, int(i))  # type: ignore[attr-defined]
            assert client.post("/v1/models/twins/predict", json=body).status_code == 200
    store.close()


def _monitor(served_workspace: ServedWorkspace, workspace: Path, *args: str) -> tuple[int, str]:
    uri = f"sqlite:///{served_workspace.root / 'mlflow.db'}"
    result = runner.invoke(
        app, ["monitor", "twins@champion", f"workspace={workspace}", f"logger.uri={uri}", *args]
    )
    return result.exit_code, result.output


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "ws"


def _report(workspace: Path) -> Path:
    (report,) = (workspace / "reports").glob("drift-twins-v1-*")
    return report


def test_unshifted_requests_do_not_drift_and_the_report_is_written(
    served: ServedModel, served_workspace: ServedWorkspace, workspace: Path
) -> None:
    _send(served, workspace, N_REQUESTS)
    code, output = _monitor(served_workspace, workspace)
    assert code == 0, output
    assert "no drift" in output
    # the reference's outputs come from the pairs that never trained the model
    assert served.directory is not None
    unseen = read_manifest(served.directory)["reference_unseen"]
    reference = served_reference(served)
    assert 0 < unseen < len(reference) and reference["age"].notna().all()
    for column in ("probability", "similarity", "embedding_distance"):
        assert reference[column][:unseen].notna().all(), column
        assert reference[column][unseen:].isna().all(), column
    report = _report(workspace)
    summary = json.loads((report / "drift.json").read_text())
    assert summary["status"] == "no_drift" and summary["n_current"] == N_REQUESTS
    assert {f["name"] for f in summary["features"]} == {
        "age", "male_share", "missing_share", "level", "spread", "pc1", "pc2", "pc3",
        "embedding_distance", "probability", "similarity",
    }  # fmt: skip
    kinds = {f["name"]: f["kind"] for f in summary["features"]}
    assert kinds["embedding_distance"] == "embedding" and kinds["probability"] == "output"
    # outputs are tested against the unseen rows only, and the report says so
    tested = {f["name"]: f["n_reference"] for f in summary["features"]}
    assert tested["probability"] == tested["embedding_distance"] == unseen
    assert tested["age"] == summary["n_reference"] == len(reference)
    said = " ".join(output.split())
    assert f"{len(reference)} reference rows ({unseen} for the model's outputs" in said, said
    assert summary["embedding_drift"] is False
    assert (report / "drift.png").stat().st_size > 10_000
    assert "<html" in (report / "evidently.html").read_text()[:2000].lower()
    # Evidently runs the same KS test on the same columns: its p-values are ours
    document = json.loads((report / "evidently.json").read_text())
    theirs = evidently_p_values(document)
    ours = {f["name"]: f["p_value"] for f in summary["features"] if f["p_value"] is not None}
    assert set(theirs) == set(ours)
    for name, p in ours.items():
        assert theirs[name] == pytest.approx(p, rel=1e-6, abs=1e-12), name
    assert evidently_drift_detected(document) is False


def test_monitor_scores_the_reference_with_the_variant_the_server_ran(
    served: ServedModel, served_workspace: ServedWorkspace, workspace: Path
) -> None:
    choice = VariantChoice("int8", int8_max_drop=1.0)
    served_int8 = load_served(
        served_workspace.registry, "twins@champion", workspace / "int8", 1, choice
    )
    _send(served, workspace, N_REQUESTS)  # an fp32 server and an int8 one, one capture store
    _send(served_int8, workspace, N_REQUESTS)
    int8 = ("serve.variant=int8", "serve.int8_max_drop=1.0")
    variants = {}
    for args in ((), int8):
        code, output = _monitor(served_workspace, workspace, *args)
        assert code == 0, output
        report = _report(workspace)
        variants[args] = json.loads((report / "drift.json").read_text())
        report.rename(workspace / f"report-{len(variants)}")  # the next run writes its own
    assert variants[()]["variant"] == "fp32" and variants[int8]["variant"] == "int8"
    # each tests only the captures its own variant answered
    assert variants[()]["n_current"] == N_REQUESTS == variants[int8]["n_current"]
    reference = {f["name"]: f["reference_mean"] for f in variants[()]["features"]}
    int8_reference = {f["name"]: f["reference_mean"] for f in variants[int8]["features"]}
    # the inputs' features are the same rows; the model's outputs on them are int8's own
    assert int8_reference["age"] == reference["age"]
    assert int8_reference["probability"] != reference["probability"]


def test_a_site_offset_drifts_and_exits_1(
    served: ServedModel, served_workspace: ServedWorkspace, workspace: Path
) -> None:
    _send(served, workspace, N_REQUESTS)
    _send(served, workspace, N_REQUESTS, scale=1.2)
    code, output = _monitor(served_workspace, workspace, "--last", str(N_REQUESTS))
    assert code == 1, output
    summary = json.loads((_report(workspace) / "drift.json").read_text())
    assert summary["status"] == "drift" and summary["n_current"] == N_REQUESTS
    drifted = {f["name"] for f in summary["features"] if f["drifted"]}
    assert "level" in drifted
    assert not drifted & {"age", "male_share", "missing_share"}  # untouched by the offset
    # Evidently's report gives the same verdict, whatever share of the columns drifted
    assert evidently_drift_detected(json.loads((_report(workspace) / "evidently.json").read_text()))


def test_monitors_started_in_the_same_second_each_get_their_own_report_folder(
    served: ServedModel,
    served_workspace: ServedWorkspace,
    workspace: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Named to the second, two runs (a cron job and a person) wrote into one folder.
    _send(served, workspace, N_REQUESTS)
    monkeypatch.setattr(time, "strftime", lambda fmt, *at: "20260101-120000")
    for _ in range(2):
        code, output = _monitor(served_workspace, workspace)
        assert code == 0, output
    folders = sorted(p.name for p in (workspace / "reports").iterdir())
    assert folders == ["drift-twins-v1-20260101-120000", "drift-twins-v1-20260101-120000-2"]
    assert all((workspace / "reports" / f / "drift.json").is_file() for f in folders)


def test_since_keeps_recent_captures(
    served: ServedModel, served_workspace: ServedWorkspace, workspace: Path
) -> None:
    _send(served, workspace, N_REQUESTS)
    code, output = _monitor(served_workspace, workspace, "--since", "1h")
    assert code == 0, output


def test_too_few_captures_exit_2_saying_how_many(
    served: ServedModel, served_workspace: ServedWorkspace, workspace: Path
) -> None:
    _send(served, workspace, 5)
    code, output = _monitor(served_workspace, workspace)
    assert code == 2
    assert "5 captured requests, at least 30" in output


def test_no_capture_store_exits_2_naming_the_file(
    served_workspace: ServedWorkspace, workspace: Path
) -> None:
    code, output = _monitor(served_workspace, workspace)
    assert code == 2
    assert "capture.db" in output and "no capture store" in output
    # a model or alias that is not registered is said as such, not as a missing store
    uri = f"logger.uri=sqlite:///{served_workspace.root / 'mlflow.db'}"
    for reference, said in [
        ("twinz@champion", "No registered model 'twinz'; registered: twins"),
        ("twins@staging", "twins has no alias 'staging'"),
    ]:
        done = runner.invoke(app, ["monitor", reference, f"workspace={workspace}", uri])
        assert done.exit_code == 2 and said in done.output, done.output
        assert "no capture store" not in done.output


@pytest.mark.parametrize("since", ["30 minutes", "m", "-5m", "0s"])
def test_a_bad_duration_exits_2(
    served_workspace: ServedWorkspace, workspace: Path, since: str
) -> None:
    code, output = _monitor(served_workspace, workspace, "--since", since)
    assert code == 2
    assert "duration" in output


def test_the_capture_store_the_server_was_pointed_at_is_the_one_read(
    served: ServedModel, served_workspace: ServedWorkspace, workspace: Path, tmp_path: Path
) -> None:
    # A server given serve.capture_path (its workspace mounted read-only) captured where
    # monitor never looked.
    elsewhere = tmp_path / "captures"
    _send(served, elsewhere, N_REQUESTS)
    code, output = _monitor(served_workspace, workspace)
    assert code == 2 and "no capture store" in output, output
    store = elsewhere / "capture.db"
    copies = tmp_path / "copies"
    code, output = _monitor(
        served_workspace, workspace, f"serve.capture_path={store}", f"serve.cache_dir={copies}"
    )
    assert code == 0 and f"{N_REQUESTS} requests vs" in " ".join(output.split()), output
    assert [p.name for p in copies.iterdir()] == ["twins-v1"]
