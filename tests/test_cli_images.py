"""The image datasets and experiments through the real `modelcycle` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from modelcycle.cli import app
from modelcycle.config import assemble, compose_config
from modelcycle.data.image_set import ImageSource
from modelcycle.tasks.image import ImageTask

runner = CliRunner()
# Small enough for a slow test, big enough that the model beats the baseline (the gate).
TINY_RICE = [
    "data.synthetic=true",
    "data.image_size=32",
    "data.per_class_synthetic=60",
    "model.name=test_resnet",
    "task.lr=0.01",
    "trainer.max_epochs=20",
    "trainer.min_epochs=20",
    "trainer.progress_bar=false",
    "task.held_out_rows=10",
]


@pytest.mark.parametrize(
    ("experiment", "dataset"),
    [("image_rice", "rice"), ("image_flowers", "flowers102"), ("image_signmnist", "signmnist")],
)
def test_experiments_compose_into_the_image_task(
    experiment: str, dataset: str, workspace: Path
) -> None:
    assembled = assemble(compose_config([f"experiment={experiment}"]))
    task = assembled.task
    assert isinstance(task, ImageTask) and isinstance(task.source, ImageSource)
    assert task.source.dataset == dataset and not task.source.synthetic
    assert Path(task.source.download_dir) == workspace.resolve() / "data" / dataset
    assert assembled.pipeline.n_folds == 1 and assembled.pipeline.run_name == experiment
    assert task.hflip is (dataset != "signmnist")  # a mirrored sign is another hand's


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [("rice", "Rice_Image_Dataset/Basmati/basmati (1).jpg"), ("signmnist", "sign_mnist_test.csv")],
)
def test_data_fetch_synthetic_writes_the_real_layout(
    dataset: str, expected: str, tmp_path: Path, workspace: Path
) -> None:
    result = runner.invoke(app, ["data", "fetch", dataset, "--synthetic", "--dest", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / expected).is_file() and "stand-in" in result.output


def test_data_fetch_real_download_offline_is_one_clear_line(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kagglehub

    def offline(handle: str, **kwargs: Any) -> str:
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    result = runner.invoke(app, ["data", "fetch", "rice"])
    assert result.exit_code == 2
    assert (
        "muratkokludataset/rice-image-dataset" in result.output and "--synthetic" in result.output
    )
    assert "Traceback" not in result.output


def test_data_fetch_names_every_dataset_and_refuses_a_qtim_stand_in() -> None:
    unknown = runner.invoke(app, ["data", "fetch", "imagenet"])
    assert unknown.exit_code != 0
    assert all(name in unknown.output for name in ("qtim", "rice", "flowers102", "signmnist"))
    qtim = runner.invoke(app, ["data", "fetch", "qtim", "--synthetic"])
    assert qtim.exit_code != 0 and "no synthetic stand-in" in qtim.output


def test_a_backbone_that_cannot_take_the_images_is_one_line_that_says_the_way_out(
    workspace: Path,
) -> None:
    # A vision transformer built for 224 px ended the run in an AssertionError traceback.
    result = runner.invoke(
        app,
        ["train", "experiment=image_rice", *TINY_RICE[:3], "model.name=vit_tiny_patch16_224"],
    )
    assert result.exit_code == 2, result.output
    assert "cannot take the data's 32×32 images (it is built for 224×224)" in result.output
    assert "data.image_size" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_pipeline_image_rice_end_to_end(workspace: Path) -> None:
    result = runner.invoke(app, ["pipeline", "image_rice", *TINY_RICE])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "registered image_rice version 1 as @challenger" in out
    assert "promoted version 1 to @champion" in out and "exported ONNX" in out
    (report,) = (workspace / "reports").glob("image_rice-*")
    summary = json.loads((report / "summary.json").read_text())
    assert summary["data"]["images"] == 300 and summary["data"]["classes"] == 5
    assert "skipped Rice_Citation_Request.txt (not a class folder)" in summary["data"]["notes"]
    assert "One fold" in (report / "summary.md").read_text()
    for plot in ("fold0_confusion.png", "fold0_recall.png", "fold0_reliability.png"):
        assert (report / plot).stat().st_size > 5000
    export = json.loads(
        next((workspace / "exports").glob("image_rice-v1/model/onnx/export.json")).read_text()
    )
    assert export["parity"]["passed"] is True
