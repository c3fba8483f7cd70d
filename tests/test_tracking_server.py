"""Tracking on a real MLflow tracking server (`mlflow server`, on loopback), as a deployment
does it: train and register on one machine, serve the model from another.

The server keeps runs in its own SQLite file and proxies artifacts (`--serve-artifacts`),
the way deploy/compose.yaml starts it.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelcycle.tracking import Tracker, TrackingSettings, browse_runs, tracking_server
from server_process import Server, free_port, serve_command, started, wait_ready


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on a free loopback port; its URL."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--backend-store-uri=sqlite:///{root / 'mlflow.db'}",
        f"--artifacts-destination={root / 'artifacts'}",
        "--serve-artifacts",
        "--workers=1",
    ]
    log = root / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=root)
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        wait_ready(server, "/health")
        yield server.url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def test_only_http_and_databricks_uris_are_tracking_servers() -> None:
    assert tracking_server("http://mlflow:5000") and tracking_server("HTTPS://m.example.com")
    assert tracking_server("databricks")
    for local in ("sqlite:////tmp/mlflow.db", "file:///tmp/mlruns", "/tmp/mlruns"):
        assert not tracking_server(local), local
    assert not tracking_server("postgresql://u@db/mlflow")  # a database this process opens
    assert browse_runs("http://mlflow:5000") == "open http://mlflow:5000"
    assert "mlflow ui --backend-store-uri sqlite:///x.db" in browse_runs("sqlite:///x.db")


@pytest.mark.slow  # an MLflow server (~10 s to start), a pipeline and a model server
def test_a_model_trained_on_one_machine_is_served_from_another(
    mlflow_server: str, real_qtim: Path, tmp_path: Path
) -> None:
    """Runs tracked on a server keep their artifacts there: a model server with another
    workspace loads the registered model (they stayed in the trainer's workspace, out of
    reach of any other machine, and the API of deploy/compose.yaml could not start)."""
    trainer, api = tmp_path / "trainer", tmp_path / "api"
    pipeline = [
        sys.executable,
        "-m",
        "modelcycle",
        "pipeline",
        "twins",
        f"data.root={real_qtim}",  # the tiny cohort's baseline is perfect: none beats it
        "debug=tiny",
        "trainer.max_epochs=2",
        f"workspace={trainer}",
        f"logger.uri={mlflow_server}",
    ]
    done = subprocess.run(pipeline, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"Browse runs: open {mlflow_server}" in done.stdout
    assert "registered twins version 1" in done.stdout
    assert "View run" not in done.stdout  # MLflow's own link per run, 13 lines of them

    from mlflow import MlflowClient

    version = MlflowClient(mlflow_server).get_model_version_by_alias("twins", "champion")
    assert str(version.source).startswith("mlflow-artifacts:"), version.source
    assert "task:" in version.tags["lineage.config"]  # read from the server's artifacts
    assert "unavailable" not in version.tags["lineage.config"]
    shutil.rmtree(trainer)  # nothing may come from the trainer's disk

    port = free_port()
    command = serve_command(api, port, f"logger.uri={mlflow_server}")
    with started(command, tmp_path / "serve.log", f"http://127.0.0.1:{port}") as server:
        url = server.url
        example = httpx.get(f"{url}/v1/models/twins/examples", timeout=10).json()["examples"]
        answer = httpx.post(
            f"{url}/v1/models/twins/predict", json=example[0]["request"], timeout=10
        )
        assert answer.status_code == 200, answer.text + server.output()
        assert answer.json()["version"] == "1"
    assert not trainer.exists()


def test_an_experiment_kept_in_a_folder_on_a_server_is_warned_about(
    mlflow_server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    client.create_experiment("folder-kept", artifact_location=(tmp_path / "a").as_uri())
    with caplog.at_level(logging.WARNING, logger="modelcycle.tracking"):
        Tracker(TrackingSettings(uri=mlflow_server, experiment="folder-kept"), tmp_path)
        fresh = Tracker(TrackingSettings(uri=mlflow_server, experiment="fresh"), tmp_path)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "'folder-kept'" in warned[0], warned
    assert "a folder of one machine" in warned[0] and "logger.experiment=NAME" in warned[0]
    location = client.get_experiment(fresh.experiment_id).artifact_location
    assert location.startswith("mlflow-artifacts:"), location
