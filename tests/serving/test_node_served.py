"""Node classification from the command line to the browser: `modelcycle pipeline node_wikics`
on the Wiki-CS stand-in, then `modelcycle serve` (uvicorn) classifying ego graphs, a server
that cannot import torch checking drift, and the web page in Debian's headless Chromium."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect
from test_web_page import ARTIFACTS, chromium_page

from server_process import drift_without_torch, running_server
from serving_fixtures import documented_answer

pytestmark = pytest.mark.slow

MODEL = "node_wikics"
#: Two official splits and fewer epochs: enough to beat label propagation (the gate).
TINY = ["cv.n_folds=2", "trainer.max_epochs=30", "trainer.progress_bar=false"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace where `modelcycle pipeline node_wikics data.synthetic=true` ran."""
    root = tmp_path_factory.mktemp("node") / "ws"
    env = {**os.environ, "MODELCYCLE_HOME": str(root)}
    command = [sys.executable, "-m", "modelcycle", "pipeline", MODEL, "data.synthetic=true", *TINY]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert f"registered {MODEL} version 1 as @challenger" in output, output[-4000:]
    assert "exported ONNX" in output and "Traceback" not in output
    assert "torch.jit.script" not in output  # PyG's import warning is not shown
    return root


def test_the_pipeline_reports_plots_and_exports(workspace: Path) -> None:
    (report,) = (workspace / "reports").glob(f"{MODEL}-*")
    summary = json.loads((report / "summary.json").read_text())
    assert summary["data"]["nodes"] == 2000 and summary["data"]["splits"] == 20
    for plot in ("fold0_confusion.png", "fold1_recall.png", "fold0_reliability.png"):
        assert (report / plot).stat().st_size > 5000, plot
    (export,) = (workspace / "exports").glob(f"{MODEL}-v1/model/onnx/export.json")
    record = json.loads(export.read_text())
    assert record["parity"]["passed"] is True and record["metric_name"] == "top-1 accuracy"


def test_the_served_model_classifies_an_ego_graph_and_names_bad_requests(
    workspace: Path, tmp_path: Path
) -> None:
    route = f"/v1/models/{MODEL}/predict"
    with (
        running_server(workspace, tmp_path / "server.log", f"{MODEL}@champion") as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        examples = client.get(f"/v1/models/{MODEL}/examples").json()["examples"]
        request = examples[0]["request"]
        answer = client.post(route, json=request)
        assert answer.status_code == 200, answer.text
        top = answer.json()["outputs"]["top_k"]
        assert len(top) == 3 and top[0]["probability"] >= top[1]["probability"]
        alone = client.post(route, json={"features": request["features"][:1]})  # no links
        assert alone.status_code == 200, alone.text
        documented = documented_answer(client)
        for body in (answer.json(), alone.json()):
            documented.validate(body)
            assert body["outputs"]["class"] == body["outputs"]["top_k"][0]["class"]
        # neighbours sent without their links were ignored: the lone article's answer
        forgot = client.post(route, json={"features": request["features"]})
        assert forgot.status_code == 422 and "add [0, 1] to links" in forgot.json()["detail"]
        short = client.post(route, json={"features": [[0.0] * 5]})
        assert short.status_code == 422 and "every vector has 300" in short.json()["detail"]
        listed = client.get("/v1/models").json()["models"][0]
        assert listed["inputs"] == ["features", "links", "mask"]


def test_the_server_needs_no_torch_and_checks_drift(workspace: Path, tmp_path: Path) -> None:
    summary = drift_without_torch(workspace, MODEL, tmp_path / "server.log")
    columns = {feature["name"] for feature in summary["features"]}
    assert {"neighbours", "links_among", "feature_mean", "embedding_distance"} <= columns


def test_the_page_classifies_an_example(workspace: Path, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with (
        running_server(workspace, tmp_path / "server.log", f"{MODEL}@champion") as server,
        chromium_page(height=900) as (page, errors),
    ):
        page.goto(f"{server.url}/")
        expect(page.locator("#model option")).to_have_text([f"{MODEL}@champion (version 1)"])
        expect(page.locator("#drop")).to_be_hidden()  # JSON only: no file drop zone
        label = page.locator("#example option").nth(0).inner_text()
        assert label.endswith("linked articles (held out)"), label
        # each vector and each link on a line of its own, not a line per number
        text = page.locator("#request").input_value()
        sent = json.loads(text)
        assert len(text.splitlines()) <= len(sent["features"]) + len(sent["links"]) + 8, text[:300]
        assert len(sent["features"][0]) > 1
        page.click("#predict")
        expect(page.locator("#topk li")).to_have_count(3)
        percent = r"(\d+\.\d|>99\.9|<0\.1)%"  # 0.9996 reads >99.9%, not 100.0%
        expect(page.locator("#prediction")).to_have_text(re.compile(rf"^[\w ]+: {percent}$"))
        expect(page.locator("#for")).to_contain_text("for example 1.")
        page.screenshot(path=ARTIFACTS / "web_page_node.png", full_page=True)
        assert not errors, f"the page raised: {errors}"
