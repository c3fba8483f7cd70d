"""`modelcycle evaluate`: a train run's fold checkpoints re-scored to the numbers train wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from typer.testing import CliRunner

from modelcycle.cli import app
from modelcycle.tracking import Tracker, TrackingSettings

runner = CliRunner()
TINY = ["debug=tiny", "trainer.max_epochs=2"]
PRIMARY_MEAN = "model_auc_twin_vs_unrelated_mean"


def fold_scores(report_dir: Path) -> list[dict[str, Any]]:
    folds = json.loads((report_dir / "summary.json").read_text())["folds"]
    return [{k: f[k] for k in ("fold", "n_test", "model", "baseline")} for f in folds]


def test_evaluate_rescores_a_train_run_to_the_numbers_train_wrote(
    tiny_qtim: Path, workspace: Path, tmp_path: Path
) -> None:
    trained = runner.invoke(app, ["train", f"data.root={tiny_qtim}", *TINY])
    assert trained.exit_code == 0, trained.stdout
    report_dir = next((workspace / "reports").glob("twins-*"))
    run_id = json.loads((report_dir / "summary.json").read_text())["run_id"]
    assert f"MLflow run {run_id}" in trained.stdout
    scores, means = fold_scores(report_dir), (report_dir / "metrics.json").read_text()
    trained_seconds = json.loads((report_dir / "summary.json").read_text())["seconds"]
    # the tiny cohort saturates the metrics; the similarity scores behind them show the weights
    curves = json.loads((report_dir / "fold0_curves.json").read_text())
    assert len(scores) == 2 and curves["model"]["scores"] != curves["baseline"]["scores"]

    by_id = runner.invoke(app, ["evaluate", run_id])  # into the run's own report folder
    assert by_id.exit_code == 0, by_id.stdout
    assert "model vs baseline" in by_id.stdout and f"MLflow run {run_id}" in by_id.stdout
    assert fold_scores(report_dir) == scores
    assert (report_dir / "metrics.json").read_text() == means
    # the run's report keeps the training's wall time, not the re-scoring's
    assert json.loads((report_dir / "summary.json").read_text())["seconds"] == trained_seconds

    # data that moved are found again; a training setting, which would change nothing, is refused
    moved = tmp_path / "moved-qtim"
    shutil.copytree(tiny_qtim, moved)
    again = runner.invoke(
        app, ["evaluate", run_id, f"data.root={moved}", "--out", str(moved / "r")]
    )
    assert again.exit_code == 0, again.stdout
    assert fold_scores(moved / "r") == scores
    ignored = runner.invoke(app, ["evaluate", run_id, "trainer.max_epochs=5"])
    assert ignored.exit_code == 2
    assert "trainer.max_epochs=5: evaluate re-scores the run with the config it was trained" in (
        " ".join(ignored.stdout.split())
    )

    out = tmp_path / "evaluated"
    by_folder = runner.invoke(app, ["evaluate", str(report_dir), "--out", str(out)])
    assert by_folder.exit_code == 0, by_folder.stdout
    assert fold_scores(out) == scores and (out / "metrics.json").read_text() == means
    assert json.loads((out / "summary.json").read_text())["run_id"] == run_id
    for name in ("summary.png", "fold0_roc.png", "fold1_retrieval.png"):
        assert (out / name).stat().st_size > 1000
    assert json.loads((out / "fold0_curves.json").read_text()) == curves
    assert (out / "config.yaml").is_file()

    # tracked in the same runs: no new run, the parent's means and each fold's test metrics
    # logged once by train and once per evaluation, with the same values
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    runs = client.search_runs([client.get_run(run_id).info.experiment_id])
    assert len(runs) == 4  # parent, two folds, final fit
    history = client.get_metric_history(run_id, PRIMARY_MEAN)
    assert len(history) == 4 and len({m.value for m in history}) == 1  # train, 3 evaluations
    fold0 = next(r for r in runs if r.info.run_name == "twins-fold0").info.run_id
    tested = client.get_metric_history(fold0, "test_auc_twin_vs_unrelated")
    assert [m.value for m in tested] == [scores[0]["model"]["auc_twin_vs_unrelated"]] * 4
    assert "plots" in {a.path for a in client.list_artifacts(run_id)}

    # what cannot be re-scored says why, and exits 2
    (report_dir / "checkpoints" / "fold1" / "best.ckpt").unlink()
    gone = runner.invoke(app, ["evaluate", run_id])
    assert gone.exit_code == 2 and "No checkpoint for fold 1" in gone.stdout
    (tiny_qtim / "participants.tsv").write_text((tiny_qtim / "participants.tsv").read_text() + "\n")
    changed = runner.invoke(app, ["evaluate", run_id])
    assert changed.exit_code == 2 and "The data changed since run" in changed.stdout


def test_evaluate_names_a_bad_run_and_how_to_find_run_ids(workspace: Path, tmp_path: Path) -> None:
    Tracker(TrackingSettings(), workspace)  # a store with no train run in it
    assert (workspace / "mlflow.db").is_file()
    unknown = runner.invoke(app, ["evaluate", "no-such-run"])
    assert unknown.exit_code == 2, unknown.stdout
    assert "No run 'no-such-run'" in unknown.stdout
    assert "modelcycle train" in unknown.stdout
    assert "mlflow ui --backend-store-uri" in unknown.stdout
    absent = runner.invoke(app, ["evaluate", str(tmp_path / "absent")])
    assert absent.exit_code == 2, absent.stdout
    assert f"No folder {tmp_path / 'absent'}: nothing is there" in absent.stdout
    not_a_report = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert not_a_report.exit_code == 2 and "holds no summary.json" in not_a_report.stdout
    latest = runner.invoke(app, ["evaluate", "latest"])
    assert latest.exit_code == 2 and "No finished pipeline run" in latest.stdout
    assert "Traceback" not in unknown.stdout + absent.stdout + not_a_report.stdout + latest.stdout


def test_evaluate_says_what_a_fold_or_a_sweep_run_is(workspace: Path) -> None:
    # A sweep's run was answered "evaluate the parent run, not a fold's": it has no parent
    # train run, and its trials keep no checkpoints to evaluate.
    tracker = Tracker(TrackingSettings(), workspace)
    with tracker.run("sweep-twins") as sweep_run:
        tracker.set_tags({"sweep.study": "twins"})
    with tracker.run("twins-fold0") as fold_run:
        pass
    sweep = runner.invoke(app, ["evaluate", sweep_run])
    assert sweep.exit_code == 2, sweep.stdout
    said = " ".join(sweep.stdout.split())
    assert "a run of sweep 'twins'" in said and "train the best parameters" in said
    fold = runner.invoke(app, ["evaluate", fold_run])
    assert fold.exit_code == 2 and "not a fold's" in " ".join(fold.stdout.split())
