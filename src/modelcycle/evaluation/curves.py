"""A fold's curves as a small JSON file: what its plots show, without every raw score."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np

from modelcycle.tasks.base import Evaluation

#: Significant digits a number keeps.
DIGITS = 5
#: Numeric sequences longer than this are kept as this many values at evenly spaced ranks.
MAX_POINTS = 201


def compact(value: Any) -> Any:
    """A JSON-safe, small copy of an evaluation's details.

    Numeric sequences of at most `MAX_POINTS` values are kept as they are; longer ones
    become `{"n": length, "sorted_sample": values at MAX_POINTS evenly spaced ranks}`, which
    keeps a distribution's shape and, for curves stored as parallel non-decreasing
    coordinates of the same length (a ROC's false and true positive rates), keeps the
    points paired. Numbers keep `DIGITS` significant digits, plenty for a plot; NaN and
    infinities become null.
    """
    if isinstance(value, Mapping):
        return {str(k): compact(v) for k, v in value.items()}
    if isinstance(value, list | tuple) and not all(isinstance(v, Real) for v in value):
        return [compact(v) for v in value]  # e.g. a ROC's (fpr, tpr), a confusion matrix
    if isinstance(value, np.ndarray | list | tuple):
        array = np.asarray(value)
        if array.ndim == 1 and array.dtype.kind in "biuf" and len(array) > MAX_POINTS:
            ranks = np.linspace(0, len(array) - 1, MAX_POINTS).round().astype(int)
            return {"n": len(array), "sorted_sample": _number(np.sort(array)[ranks].tolist())}
        return _number(array.tolist())
    if isinstance(value, np.generic):
        return _number(value.item())
    return _number(value)


def points(value: Any) -> list[float]:
    """The numbers of a `compact`ed sequence, whether kept whole or sampled."""
    if isinstance(value, Mapping):
        return [float("nan") if v is None else float(v) for v in value["sorted_sample"]]
    return [float("nan") if v is None else float(v) for v in value]


def write_curves(evaluations: Mapping[str, Evaluation], out_dir: Path, tag: str) -> Path:
    """Write `{tag}_curves.json`: each scorer's compacted details, beside its plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{tag}_curves.json"
    payload = {name: compact(ev.details) for name, ev in evaluations.items()}
    # a detail JSON cannot hold (a task's own object) is kept as its text, not a crash
    path.write_text(json.dumps(payload, allow_nan=False, default=str))
    return path


def _number(value: Any) -> Any:
    if isinstance(value, list):
        return [_number(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.{DIGITS}g}") if math.isfinite(value) else None
    return value
