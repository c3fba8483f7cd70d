"""Tracking on a real MLflow tracking server (`mlflow server`, on loopback), as a deployment
does it: train and register on one machine, serve the model from another.

The server keeps runs in its own SQLite file and proxies artifacts (`--serve-artifacts`),
the way deploy/compose.yaml starts it.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from modelcycle.tracking import (
    Tracker,
    TrackingError,
    TrackingSettings,
    browse_runs,
    check_reachable,
    tracking_server,
)
from server_process import free_port, serve_command, started


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
    url = f"http://127.0.0.1:{port}"
    with started(command, root / "server.log", url, ready_path="/health") as server:
        yield server.url


def test_only_http_and_databricks_uris_are_tracking_servers() -> None:
    assert tracking_server("http://mlflow:5000") and tracking_server("HTTPS://m.example.com")
    assert tracking_server("databricks")
    for local in ("sqlite:////tmp/mlflow.db", "file:///tmp/mlruns", "/tmp/mlruns"):
        assert not tracking_server(local), local
    assert not tracking_server("postgresql://u@db/mlflow")  # a database this process opens
    assert browse_runs("http://mlflow:5000") == "open http://mlflow:5000"
    assert "mlflow ui --backend-store-uri sqlite:///x.db" in browse_runs("sqlite:///x.db")


@contextmanager
def _listening(answer: bytes | None) -> Iterator[str]:
    """A loopback socket that answers each connection with `answer`, or never (None)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            held.append(connection)
            if answer is not None:
                connection.recv(65536)
                connection.sendall(answer)
                connection.close()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()
        for connection in held:
            connection.close()


def test_a_tracking_server_that_is_down_is_one_clear_error_at_once() -> None:
    down = f"http://127.0.0.1:{free_port()}"
    started_at = time.monotonic()
    with pytest.raises(TrackingError, match="no MLflow tracking server answers there") as err:
        check_reachable(down)
    assert time.monotonic() - started_at < 30  # MLflow's own retries took 4 minutes
    assert "Connection refused" in str(err.value) and f"logger.uri={down}" in str(err.value)
    with _listening(None) as silent, pytest.raises(TrackingError, match=r"\(no answer\)"):
        check_reachable(silent, seconds=0.5)
    # any HTTP answer is a server there (a proxy asking for credentials too): MLflow goes on
    with _listening(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n") as guarded:
        check_reachable(guarded)
    check_reachable("sqlite:////nowhere/mlflow.db")  # not a server: nothing to ask


def test_commands_on_a_tracking_server_that_is_down_fail_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from modelcycle.cli import app

    down = f"logger.uri=http://127.0.0.1:{free_port()}"
    runner = CliRunner()
    for args in (
        ["pipeline", "twins", f"workspace={tmp_path}", down],
        ["history", "twins", f"workspace={tmp_path}", down],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.stdout)
        assert "no MLflow tracking server answers there" in result.stdout, result.stdout
        assert "Traceback" not in result.stdout


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
    assert "View run" not in done.stdout  # MLflow's own two link lines per run

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


@pytest.mark.slow  # an MLflow server (~10 s to start)
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
