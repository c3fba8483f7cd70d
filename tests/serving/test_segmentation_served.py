"""Segmentation from the command line to the browser: `modelcycle pipeline segmentation_bcss`
on the BCSS stand-in, then `modelcycle serve` (uvicorn) answering tiles, and the web page in
Debian's headless Chromium drawing the mask."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect
from test_web_page import ARTIFACTS, chromium_page

from server_process import running_server
from serving_fixtures import documented_answer

pytestmark = pytest.mark.slow

MODEL = "segmentation_bcss"
#: Small enough for a slow test, big enough that the U-Net beats the colour baseline (the gate).
TINY = [
    "data.synthetic=true",
    "data.image_size=32",
    "data.synthetic_slides=8",
    "data.synthetic_tiles=8",
    "model.width=8",
    "model.depth=3",
    "model.res_units=1",
    "task.lr=0.01",
    "task.held_out_rows=6",
    "trainer.max_epochs=25",
    "trainer.min_epochs=25",
    "trainer.progress_bar=false",
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace where `modelcycle pipeline segmentation_bcss` ran, as a user runs it."""
    root = tmp_path_factory.mktemp("segmentation") / "ws"
    env = {**os.environ, "MODELCYCLE_HOME": str(root)}
    command = [sys.executable, "-m", "modelcycle", "pipeline", MODEL, *TINY]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert f"registered {MODEL} version 1 as @challenger" in output, output[-4000:]
    assert "exported ONNX" in output and "Traceback" not in output
    # the exporter's and quantizer's notes about instance norm are not shown
    assert "instance_norm" not in output and "out-of-range for weight" not in output
    return root


def test_the_pipeline_reports_plots_and_exports(workspace: Path) -> None:
    (report,) = (workspace / "reports").glob(f"{MODEL}-*")
    summary = json.loads((report / "summary.json").read_text())
    assert summary["data"]["groups"] == 8 and summary["data"]["tiles"] > 40
    assert any(note.startswith("pixels per class: other") for note in summary["data"]["notes"])
    for plot in ("fold0_confusion.png", "fold0_dice.png", "fold0_examples.png"):
        assert (report / plot).stat().st_size > 5000, plot
    curves = json.loads((report / "fold0_curves.json").read_text())
    assert curves["model"]["examples"] == "4 example tiles (in the examples plot)"
    (export,) = (workspace / "exports").glob(f"{MODEL}-v1/model/onnx/export.json")
    record = json.loads(export.read_text())
    assert record["parity"]["passed"] is True
    assert record["metric_name"] == "mean Dice"
    fp32, int8 = (record["metric"][name] for name in ("fp32", "int8"))
    assert 0.5 < fp32 <= 1 and abs(fp32 - int8) < 0.1


def _tile(workspace: Path) -> Path:
    """A tile of the stand-in's test part: the real split's tiles that come without masks."""
    return sorted((workspace / "data" / "bcss" / "BCSS" / "test").glob("*.png"))[0]


def _mask(answer: dict[str, object]) -> np.ndarray:
    outputs = answer["outputs"]
    assert isinstance(outputs, dict)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(outputs["mask"]))))


def test_the_served_model_answers_a_tile_in_every_form_with_the_same_mask(
    workspace: Path, tmp_path: Path
) -> None:
    data = _tile(workspace).read_bytes()
    route = f"/v1/models/{MODEL}/predict"
    with (
        running_server(workspace, tmp_path / "server.log", f"{MODEL}@champion") as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        raw = client.post(route, content=data, headers={"Content-Type": "image/png"})
        assert raw.status_code == 200, raw.text
        answer = raw.json()
        assert answer["model"] == MODEL and answer["version"] == "1"
        mask = _mask(answer)  # at the tile's size (224 px), not the model's (32 px)
        width, height = Image.open(_tile(workspace)).size
        assert mask.shape == (height, width) == (224, 224) and set(np.unique(mask)) <= {0, 1, 2}
        assert answer["outputs"]["size"] == [height, width]
        shares = {c["class"]: c["share"] for c in answer["outputs"]["class_shares"]}
        assert set(shares) == {"other", "tumor", "stroma"}
        assert shares["stroma"] == pytest.approx((mask == 2).mean())

        as_json = client.post(route, json={"image": base64.b64encode(data).decode()})
        upload = client.post(route, files={"file": ("tile.png", data, "image/png")})
        for other in (as_json, upload):
            assert other.status_code == 200, other.text
            assert (_mask(other.json()) == mask).all()
        documented = documented_answer(client)
        for body in (answer, as_json.json(), upload.json()):
            documented.validate(body)

        text = client.post(route, content=b"hello", headers={"Content-Type": "image/png"})
        assert text.status_code == 415 and "PNG" in text.json()["detail"]
        metrics = client.get("/metrics").text
        series = f'modelcycle_requests_total{{model="{MODEL}",route="/v1/models/{{name}}/predict"'
        assert series + ',status="200"} 3.0' in metrics and series + ',status="415"} 1.0' in metrics


def test_a_region_of_several_tiles_is_answered_window_by_window(
    workspace: Path, tmp_path: Path
) -> None:
    # A 2×2 mosaic was squashed into one model input, at a magnification the model never
    # saw (mean Dice 0.94 on single tiles, 0.69 on such mosaics); each window is now seen as
    # a training tile, so each quadrant's mask is its tile's own.
    tiles = sorted((workspace / "data" / "bcss" / "BCSS" / "test").glob("*.png"))[:4]
    mosaic = Image.new("RGB", (448, 448))
    for k, path in enumerate(tiles):
        mosaic.paste(Image.open(path).convert("RGB"), (224 * (k % 2), 224 * (k // 2)))
    buffer = io.BytesIO()
    mosaic.save(buffer, format="PNG")
    route = f"/v1/models/{MODEL}/predict"
    png = {"Content-Type": "image/png"}
    with (
        running_server(workspace, tmp_path / "server.log", f"{MODEL}@champion") as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        alone = [client.post(route, content=t.read_bytes(), headers=png).json() for t in tiles]
        answer = client.post(route, content=buffer.getvalue(), headers=png)
    assert answer.status_code == 200, answer.text
    mask = _mask(answer.json())
    assert mask.shape == (448, 448) and answer.json()["outputs"]["size"] == [448, 448]
    for k, single in enumerate(alone):
        y, x = 224 * (k // 2), 224 * (k % 2)
        assert (mask[y : y + 224, x : x + 224] == _mask(single)).all(), k
    mean = np.mean([a["outputs"]["confidence"] for a in alone])
    assert answer.json()["outputs"]["confidence"] == pytest.approx(mean, abs=1e-6)


def test_the_page_draws_the_mask_of_an_example_and_of_a_file(
    workspace: Path, tmp_path: Path
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with (
        running_server(workspace, tmp_path / "server.log", f"{MODEL}@champion") as server,
        chromium_page(height=1000) as (page, errors),
    ):
        page.goto(f"{server.url}/")
        expect(page.locator("#model option")).to_have_text([f"{MODEL}@champion (version 1)"])
        expect(page.locator("#drop")).to_be_visible()
        label = page.locator("#example option").nth(0).inner_text()
        assert label.endswith("(held out)") and "%" in label, label
        page.click("#predict")
        # a share of the pixels, said so ("stroma 39.6%" could be read as a confidence)
        share = r"(other|tumor|stroma): (\d+\.\d|>99\.9|<0\.1)% of pixels"
        expect(page.locator("#prediction")).to_have_text(
            re.compile(rf"^{share} · {share} · {share}$")
        )
        expect(page.locator("#legend span")).to_have_count(3)
        # each class an item of its own (the names were read as one word, "othertumorstroma")
        expect(page.locator("#legend li")).to_have_text(["other", "tumor", "stroma"])
        expect(page.locator("#version")).to_contain_text("version 1")
        drawn = page.evaluate(
            "() => { const m = document.getElementById('mask');"
            " return [m.complete, m.naturalWidth, m.naturalHeight]; }"
        )
        assert drawn == [True, 32, 32], f"the mask did not render: {drawn}"

        page.set_input_files("#image", str(_tile(workspace)))  # a tile of one's own
        expect(page.locator("#for")).to_have_text(f"for your file {_tile(workspace).name}")
        expect(page.locator("#mask")).to_be_visible()
        expect(page.locator("#result")).to_contain_text("mask of 224×224 pixels (width × height)")
        page.screenshot(path=ARTIFACTS / "web_page_segmentation.png", full_page=True)
        # a wide tile: the page wrote "300×1000" for 1000 wide, 300 high (the answer's size
        # is [height, width])
        wide = tmp_path / "wide.png"
        Image.open(_tile(workspace)).convert("RGB").crop((0, 0, 224, 112)).save(wide)
        page.set_input_files("#image", str(wide))
        expect(page.locator("#for")).to_have_text("for your file wide.png")
        expect(page.locator("#result")).to_contain_text("mask of 224×112 pixels (width × height)")
        assert page.evaluate("document.getElementById('mask').naturalWidth") == 224
        # a probability that is neither 1 nor 0 never reads 100.0 % or 0.0 %
        shown = page.evaluate("[0.9996, 0.0001, 0.5, 1].map(percent)")
        assert shown == [">99.9%", "<0.1%", "50.0%", "100.0%"], shown
        assert not errors, f"the page raised: {errors}"


def test_the_server_needs_neither_torch_nor_monai_and_checks_drift(
    workspace: Path, tmp_path: Path
) -> None:
    from server_process import BLOCKED, drift_without_torch

    assert "monai" in BLOCKED and "torch" in BLOCKED
    summary = drift_without_torch(workspace, MODEL, tmp_path / "server.log")
    columns = {feature["name"] for feature in summary["features"]}
    assert columns >= {"brightness", "sharpness", "red", "confidence", "class_probability"}
    assert "probabilities" not in columns  # one pixel's probability describes nothing
