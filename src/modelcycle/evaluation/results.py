"""A run's measured results as one small, readable record, from which the docs draw plots."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from modelcycle.evaluation.curves import compact

#: Bumped when a record's layout changes; readers refuse layouts they do not know.
RECORD_FORMAT = 1
#: Config groups a record keeps, to say how the run was made (never paths).
CONFIG_KEYS = ("run_name", "seed", "cv", "trainer", "model", "task")

#: A JSON list of numbers only, over several lines.
NUMBER_LIST = re.compile(r"\[(?:\s*(?:-?[0-9][0-9.eE+-]*|null)\s*,?)+\s*\]")


class ResultsError(ValueError):
    """A report folder that cannot be turned into a results record."""


def results_record(report_dir: Path, command: str = "") -> dict[str, Any]:
    """Per-fold model and baseline metrics, their means, and each fold's curves.

    Args:
        report_dir: The report folder of a `train` or `pipeline` run (summary.json,
            config.yaml and `fold*_curves.json`).
        command: How the run was started, shown beside the numbers.
    """
    summary = _read_summary(report_dir)
    folds = [
        {
            "fold": fold["fold"],
            "n_test": fold["n_test"],
            "model": fold["model"],
            "baseline": fold["baseline"],
            "curves": compact(_read_json(report_dir / f"fold{fold['fold']}_curves.json", {})),
        }
        for fold in summary["folds"]
    ]
    return {
        "format": RECORD_FORMAT,
        "task": summary["task"],
        "run_name": summary["run_name"],
        "report": report_dir.name,
        "command": command,
        "config": _config_excerpt(report_dir / "config.yaml"),
        "metrics": summary["metrics"],
        "primary_metric": summary["primary_metric"],
        "data": summary["data"],
        "reference": summary["reference"],
        "seconds": summary["seconds"],
        "aggregate": summary["aggregate"],
        "folds": folds,
    }


def write_record(record: dict[str, Any], out: Path) -> Path:
    """Write `record` as indented JSON (short number lists on one line, for reading diffs).

    `out` is the file, or a folder for `<report folder's name>.json`.
    """
    if out.is_dir():
        out = out / f"{record['report']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=1, allow_nan=False)
    out.write_text(NUMBER_LIST.sub(lambda m: _one_line(m[0]), text) + "\n")
    return out


def read_record(path: Path) -> dict[str, Any]:
    """A record written by `write_record`; a foreign or newer layout is refused by name."""
    record: dict[str, Any] = _read_json(path, None)
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise ResultsError(
            f"{path} is not a results record of format {RECORD_FORMAT}; write it with "
            f"`modelcycle report docs-results REPORT_DIR --out {path}`."
        )
    return record


def _one_line(numbers: str) -> str:
    return re.sub(r"\s+", " ", numbers).replace("[ ", "[").replace(" ]", "]")


def _read_summary(report_dir: Path) -> dict[str, Any]:
    summary: dict[str, Any] | None = _read_json(report_dir / "summary.json", None)
    if summary is None:
        raise ResultsError(
            f"{report_dir} holds no summary.json: give the report folder of a train or "
            "pipeline run (printed as 'Report and plots: ...'), e.g. "
            ".modelcycle/reports/twins-20260101-120000."
        )
    if not summary.get("folds"):
        raise ResultsError(f"{report_dir / 'summary.json'} records no folds: rerun the training.")
    return summary


def _read_json(path: Path, missing: Any) -> Any:
    if not path.is_file():
        return missing
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ResultsError(f"{path} is not valid JSON ({err}); rerun the training.") from err


def _config_excerpt(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    config = yaml.safe_load(path.read_text()) or {}
    return {key: config[key] for key in CONFIG_KEYS if key in config}
