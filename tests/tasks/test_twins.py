"""The twins task on the real QTIM files (skipped, with the reason, when they are absent)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from modelcycle.cli import app
from modelcycle.data.pair_loader import PairDataModule
from modelcycle.data.qtim import QTIMSource
from modelcycle.data.relations import Relation
from modelcycle.data.tables import DataError
from modelcycle.models.encoders import MLPEncoder
from modelcycle.servable import ServableModel
from modelcycle.tasks.twins import TwinsData, TwinsTask

COVARIATES = Path(__file__).resolve().parents[2] / "bench" / "twins_covariates.py"


@pytest.fixture(scope="module")
def real_task(request: pytest.FixtureRequest) -> tuple[TwinsTask, TwinsData]:
    root = request.getfixturevalue("real_qtim")
    task = TwinsTask(QTIMSource(root=root), encoder=MLPEncoder)
    data, _ = task.load()
    return task, data


def test_whole_cohort_baseline_lands_in_the_published_ballpark(
    real_task: tuple[TwinsTask, TwinsData],
) -> None:
    task, data = real_task
    ref = task.reference(data)
    assert 0.90 <= ref["auc_twin_vs_unrelated"] <= 0.92
    assert 0.36 <= ref["top1"] <= 0.39
    assert ref["auc_sibling_vs_unrelated"] < ref["auc_twin_vs_unrelated"]


def test_folds_never_share_a_family(real_task: tuple[TwinsTask, TwinsData]) -> None:
    task, data = real_task
    for fold in task.folds(data, 5, seed=42):
        parts = [set(data.families[np.asarray(p)]) for p in (fold.train, fold.val, fold.test)]
        assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2])
        assert parts[1].isdisjoint(parts[2])
        val = fold.val
        assert (data.relations[np.ix_(val, val)] == Relation.TWIN).any()


def test_fold_processing_and_pairs_use_training_rows_only(
    real_task: tuple[TwinsTask, TwinsData],
) -> None:
    task, data = real_task
    fold = task.folds(data, 5, seed=42)[0]
    before = task.processed(data, fold).copy()
    poisoned = TwinsData(
        data.cohort, data.X.copy(), data.covariates, data.relations, data.families, data.sex
    )
    poisoned.X[fold.test] *= 10  # test rows change; nothing fitted may move
    poisoned.X[fold.val] *= 10
    task._processed.clear()
    after = task.processed(poisoned, fold)
    train = fold.train
    assert np.allclose(before[train], after[train])
    dm = task.datamodule(data, fold, seed=0)
    assert isinstance(dm, PairDataModule)
    train_rows = set(train.tolist())
    assert set(dm.train_set.pairs.flatten().tolist()) <= train_rows
    assert set(dm.val_set.pairs.flatten().tolist()) <= set(fold.val.tolist())
    labels = dm.train_set.labels.numpy()
    assert (labels == 0).sum() == 4 * (labels == 1).sum()


@pytest.mark.slow
def test_default_pipeline_beats_the_baseline_on_real_data(real_qtim: Path, workspace: Path) -> None:
    """The README's demo, in-process: 5 family-grouped folds, nothing selected on test."""
    args = ["pipeline", "twins", f"data.root={real_qtim}", "trainer.progress_bar=false"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stdout
    report = next((workspace / "reports").glob("twins-*"))
    agg = json.loads((report / "summary.json").read_text())["aggregate"]
    for metric in ("auc_twin_vs_unrelated", "auc_twin_vs_matched", "top1"):
        assert agg["model"][metric][0] > agg["baseline"][metric][0], metric
    # The covariate check re-scores the run's checkpoints (it fails unless they reproduce
    # the run's AUCs): matching on age and sex costs the model little, as the README says.
    rows = covariate_check(real_qtim, "--report", str(report))
    model = rows["the run's model"]
    assert model[0] == pytest.approx(agg["model"]["auc_twin_vs_unrelated"][0], abs=1e-3)
    assert abs(model[1] - model[2]) < 0.02
    # The served probability is calibrated: the head trained alongside the embedding stayed
    # near its start, and a held-out twin-like pair read 0.07.
    servable = ServableModel.load(report / "model")
    assert servable.target is not None
    with torch.no_grad():
        probability = servable.module(*map(torch.as_tensor, servable.held_out))[0].numpy()
    twins, unrelated = probability[servable.target == 1], probability[servable.target == 0]
    assert twins.mean() > 0.6 > 0.4 > unrelated.mean(), (twins.mean(), unrelated.mean())
    # the drift reference's first pairs are the validation families' (saved and read back)
    assert servable.reference is not None and servable.reference_unseen is not None
    assert 0 < servable.reference_unseen < len(servable.reference[0])


def covariate_check(data: Path, *args: str) -> dict[str, list[float]]:
    """bench/twins_covariates.py's rows: each similarity's three mean AUCs."""
    out = subprocess.run(
        [sys.executable, str(COVARIATES), "--data", str(data), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    rows = {}
    for line in out.splitlines():
        cells = re.findall(r"(\d\.\d{3}) ± \d\.\d{3}", line)
        if len(cells) == 3:
            rows[line[:34].strip()] = [float(c) for c in cells]
    return rows


def test_covariate_check_finds_age_and_sex_out_and_the_baseline_clear_of_them(
    real_qtim: Path,
) -> None:
    """bench/twins_covariates.py on real QTIM: what the README says of age and sex."""
    rows = covariate_check(real_qtim)
    alone, regressed = rows["age and sex alone"], rows["baseline (regressed, the task's)"]
    raw = rows["baseline without regression"]
    assert alone[0] > 0.9 and alone[2] == 0.5  # a giveaway, which matching takes away
    assert abs(regressed[2] - regressed[1]) < 0.02  # matching costs the task's baseline nothing
    assert raw[1] - raw[2] > 0.02  # without the regression, part of the score was age and sex


def test_covariate_check_names_a_data_folder_without_qtim(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(COVARIATES), "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert f"--data {tmp_path}: no participants.tsv there" in run.stderr


def test_covariate_check_names_a_report_folder_that_is_not_a_twins_run(
    real_qtim: Path, tmp_path: Path
) -> None:
    functional = tmp_path / "functional"
    functional.mkdir()
    (functional / "summary.json").write_text('{"task": "twins_functional"}')
    (functional / "config.yaml").write_text("seed: 42\n")
    for folder, says in (
        (tmp_path, "not a run's report folder"),
        (functional, "a 'twins_functional' run"),
    ):
        run = subprocess.run(
            [sys.executable, str(COVARIATES), "--data", str(real_qtim), "--report", str(folder)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 2
        assert f"--report {folder}: {says}" in run.stderr


def test_a_training_part_without_twin_pairs_is_refused_before_training(tmp_path: Path) -> None:
    # Training reached torch's sampler with no pairs: "num_samples should be a positive
    # integer value, but got num_samples=0", as a traceback.
    families = np.repeat(np.arange(12), 2)  # siblings only: no twin pair anywhere
    relations = np.where(families[:, None] == families[None, :], Relation.SIBLING, 0)
    np.fill_diagonal(relations, Relation.SELF)
    data = TwinsData(None, np.zeros((24, 3)), np.zeros((24, 3)), relations, families, families)  # type: ignore[arg-type]
    task = TwinsTask(QTIMSource(root=tmp_path), encoder=MLPEncoder)
    with pytest.raises(DataError, match=r"training part of fold 0 \(\d+ families\) holds no twin"):
        task.folds(data, 3, seed=0)
    with pytest.raises(DataError, match=r"the final fit .* more twin families \(data.families\)"):
        task.final_fold(data, seed=0)
