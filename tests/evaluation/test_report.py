"""Cross-validation reports: aggregation, markdown, and the files written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from modelcycle.evaluation.report import CVReport, FoldResult


def _report() -> CVReport:
    folds = [
        FoldResult(0, 10, {"auc": 0.5, "top1": 0.25}, {"auc": 0.6, "top1": 0.1}, "f0.ckpt"),
        FoldResult(1, 12, {"auc": 0.7, "top1": 0.5}, {"auc": 0.6, "top1": 0.2}, "f1.ckpt"),
        FoldResult(2, 11, {"auc": 0.9, "top1": 0.75}, {"auc": 0.6, "top1": 0.3}, "f2.ckpt"),
    ]
    return CVReport(
        task="twins",
        run_name="run-1",
        metrics=("auc", "top1"),
        primary_metric="auc",
        folds=folds,
        reference={"auc": 0.612},
        data={"subjects": 33},
        seconds=42.4,
        unit="subjects",
    )


def test_aggregate_mean_and_std_over_folds() -> None:
    agg = _report().aggregate()
    assert set(agg) == {"model", "baseline"}
    mean, std = agg["model"]["auc"]
    assert mean == pytest.approx(0.7)
    # sample std over folds (ddof=1): sqrt((0.2² + 0 + 0.2²) / 2)
    assert std == pytest.approx(math.sqrt(0.08 / 2))
    assert agg["model"]["top1"][0] == pytest.approx(0.5)
    assert agg["baseline"]["auc"] == pytest.approx((0.6, 0.0))
    assert agg["baseline"]["top1"][0] == pytest.approx(0.2)


def test_aggregate_ignores_nan_folds() -> None:
    report = _report()
    report.folds[1].model["auc"] = float("nan")
    mean, std = report.aggregate()["model"]["auc"]
    assert mean == pytest.approx(0.7)  # (0.5 + 0.9) / 2
    assert std == pytest.approx(math.sqrt(0.08))  # ddof=1 over the two remaining folds
    assert report.aggregate()["model"]["top1"][0] == pytest.approx(0.5)  # untouched


def test_markdown_has_a_row_per_metric_and_scorer_with_fold_columns_and_mean() -> None:
    md = _report().to_markdown()
    lines = md.splitlines()
    assert lines[0] == "# twins: run-1"
    assert "| metric | scorer | fold 0 | fold 1 | fold 2 | mean ± std |" in lines
    assert "|---|---|---:|---:|---:|---:|" in lines
    # std (ddof=1) of (0.5, 0.7, 0.9) = 0.2; of (0.25, 0.5, 0.75) = 0.25; of (.1, .2, .3) = 0.1
    rows = [
        "| auc | model | 0.500 | 0.700 | 0.900 | 0.700 ± 0.200 |",
        "| auc | baseline | 0.600 | 0.600 | 0.600 | 0.600 ± 0.000 |",
        "| top1 | model | 0.250 | 0.500 | 0.750 | 0.500 ± 0.250 |",
        "| top1 | baseline | 0.100 | 0.200 | 0.300 | 0.200 ± 0.100 |",
    ]
    first = lines.index(rows[0])
    assert lines[first : first + 4] == rows
    assert "Test subjects per fold: 10, 12, 11." in lines
    assert "Baseline over the whole dataset (no folds): auc 0.612." in lines
    assert "Wall time (data, folds and final fit): 42 s." in lines
    assert md.endswith("\n")
    tiles = CVReport("segmentation", "r", ("auc",), "auc", _report().folds[:1], unit="tiles")
    assert "Test tiles per fold: 10." in tiles.to_markdown().splitlines()


def test_markdown_shows_nan_folds_and_the_mean_of_the_rest() -> None:
    report = _report()
    report.folds[1].model["auc"] = float("nan")
    assert "| auc | model | 0.500 | nan | 0.900 | 0.700 ± 0.283 |" in report.to_markdown()


def test_markdown_without_reference_has_no_reference_line() -> None:
    report = _report()
    report.reference = {}
    assert "Baseline over the whole dataset" not in report.to_markdown()


def test_write_creates_the_four_files_and_json_round_trips(tmp_path: Path) -> None:
    report = _report()
    out = tmp_path / "nested" / "summary"
    paths = report.write(out)
    assert [p.name for p in paths] == ["summary.md", "summary.json", "metrics.json", "summary.png"]
    assert all(p.parent == out and p.is_file() for p in paths)
    assert (out / "summary.md").read_text() == report.to_markdown()
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    payload = json.loads((out / "summary.json").read_text())
    assert payload["task"] == "twins" and payload["primary_metric"] == "auc"
    assert payload["metrics"] == ["auc", "top1"]
    assert [FoldResult(**f) for f in payload["folds"]] == report.folds
    assert payload["reference"] == {"auc": 0.612}
    assert payload["seconds"] == 42.4
    aggregate = {
        scorer: {m: tuple(v) for m, v in metrics.items()}
        for scorer, metrics in payload["aggregate"].items()
    }
    assert aggregate == report.aggregate()
    means = json.loads((out / "metrics.json").read_text())
    assert means == {
        scorer: {m: mean for m, (mean, _) in metrics.items()}
        for scorer, metrics in report.aggregate().items()
    }
