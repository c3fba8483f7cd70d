"""Results records: a report folder becomes one small JSON file that the docs plot from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from modelcycle.cli import app
from modelcycle.evaluation.curves import write_curves
from modelcycle.evaluation.report import CVReport, FoldResult
from modelcycle.evaluation.results import (
    ResultsError,
    read_record,
    results_record,
    write_record,
)
from modelcycle.tasks.base import Evaluation


def _report_dir(tmp_path: Path) -> Path:
    out = tmp_path / "twins-20260101-120000"
    folds = [
        FoldResult(0, 10, {"auc": 0.8, "top1": 0.5}, {"auc": 0.7, "top1": 0.25}, "/a/f0.ckpt"),
        FoldResult(1, 12, {"auc": 0.9, "top1": float("nan")}, {"auc": 0.6, "top1": 0.5}, "/b"),
    ]
    report = CVReport("twins", "twins", ("auc", "top1"), "auc", folds, {"auc": 0.65}, {"n": 22})
    report.seconds = 12.5
    report.write(out)
    for fold in (0, 1):
        curve = np.linspace(0.1 * (fold + 1), 1, 20)
        scorers = {
            "model": Evaluation({}, {"retrieval": curve, "scores": {"unrelated": np.arange(900)}}),
            "baseline": Evaluation({}, {"retrieval": curve / 2}),
        }
        write_curves(scorers, out, f"fold{fold}")
    config = {"seed": 42, "data": {"root": "/private/path"}, "cv": {"n_folds": 2}}
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    return out


def test_record_holds_per_fold_metrics_curves_and_no_paths(tmp_path: Path) -> None:
    report_dir = _report_dir(tmp_path)
    record = results_record(report_dir, "modelcycle pipeline twins")
    summary = json.loads((report_dir / "summary.json").read_text())
    assert record["report"] == "twins-20260101-120000"
    assert record["command"] == "modelcycle pipeline twins"
    assert [f["model"] for f in record["folds"]] == [f["model"] for f in summary["folds"]]
    assert record["folds"][1]["model"]["top1"] is None  # NaN stays visible as null
    assert record["aggregate"] == summary["aggregate"]
    assert record["aggregate"]["model"]["auc"][0] == pytest.approx(0.85)
    assert record["folds"][1]["curves"]["model"]["retrieval"][0] == pytest.approx(0.2)
    assert record["folds"][0]["curves"]["model"]["scores"]["unrelated"]["n"] == 900
    assert record["config"] == {"seed": 42, "cv": {"n_folds": 2}}
    text = json.dumps(record)
    assert "/private/path" not in text and "ckpt" not in text


def test_written_record_reads_back_with_number_lists_on_one_line(tmp_path: Path) -> None:
    record = results_record(_report_dir(tmp_path))
    path = write_record(record, tmp_path / "docs" / "results" / "twins.json")
    assert read_record(path) == record
    retrieval = next(line for line in path.read_text().splitlines() if '"retrieval"' in line)
    assert retrieval.strip().startswith('"retrieval": [0.1, ') and retrieval.endswith("],")


def test_a_folder_without_a_report_says_which_folder_to_give(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match=r"holds no summary\.json.*report folder"):
        results_record(tmp_path)


def test_a_foreign_file_is_not_read_as_a_record(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"format": 99}))
    with pytest.raises(ResultsError, match="not a results record of format 1"):
        read_record(path)
    path.write_text("{")
    with pytest.raises(ResultsError, match="not valid JSON"):
        read_record(path)


def test_docs_results_into_a_folder_names_the_file_after_the_report(tmp_path: Path) -> None:
    # --out docs/results (a folder) ended in IsADirectoryError's traceback.
    report_dir, runner = _report_dir(tmp_path), CliRunner()
    folder = tmp_path / "docs" / "results"
    folder.mkdir(parents=True)
    made = runner.invoke(app, ["report", "docs-results", str(report_dir), "--out", str(folder)])
    assert made.exit_code == 0, made.output
    assert read_record(folder / f"{report_dir.name}.json") == results_record(report_dir)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cannot = runner.invoke(
        app, ["report", "docs-results", str(report_dir), "--out", str(blocker / "x.json")]
    )
    assert cannot.exit_code == 2, cannot.output
    assert f"{blocker}" in cannot.stdout and "check the path" in cannot.stdout
    assert "Traceback" not in cannot.output
