"""Robustness: controlled shifts injected into a registered model's data, metric and drift per size.

For twins, each shift acts on both subjects' measures: a scanner/site offset (every measure
times 1+s), the same offset of the cortical thickness measures only, measurement noise
(Gaussian, s times each measure's sd in the reference) and missing regions (a share s of
each subject's measures absent). At each size the study reports the model's ROC-AUC (twin-like
vs unrelated) on the shifted pool and the share of request windows the drift test flags.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from modelcycle.monitoring.calibration import flag_rate
from modelcycle.monitoring.drift import DriftSettings, reference_frame

if TYPE_CHECKING:
    from modelcycle.registry import Registry
    from modelcycle.serving.loading import ServedModel

SHIFTS: dict[str, tuple[float, ...]] = {
    "site offset": (0.02, 0.05, 0.1),
    "thickness offset": (0.02, 0.05, 0.1),
    "noise": (0.1, 0.25, 0.5),
    "missing": (0.05, 0.1, 0.2),
}
PAIR_TASKS = ("twins",)  # inputs a, a_covariates, b, b_covariates: measures at 0 and 2


@dataclass(frozen=True)
class ShiftPoint:
    """One shift kind at one size: how the model and the drift test fared."""

    shift: str
    size: float
    auc: float
    flagged: float
    pool: int


def shifted(
    inputs: Sequence[np.ndarray],
    kind: str,
    size: float,
    sd: np.ndarray,
    thick: np.ndarray,
    seed: int,
) -> list[np.ndarray]:
    """The pairs' inputs with one shift applied to both subjects' measures.

    Args:
        inputs: a, a_covariates, b, b_covariates (measures are rows x measures).
        kind: A key of SHIFTS.
        size: Relative offset, noise in sds, or share of measures missing.
        sd: Each measure's sd (noise scale).
        thick: Boolean mask of the cortical thickness measures.
        seed: Seeds the noise and the missing measures.
    """
    if kind not in SHIFTS:
        raise ValueError(f"unknown shift {kind!r}; choose from {', '.join(SHIFTS)}.")
    rng = np.random.default_rng(seed)
    a, a_cov, b, b_cov = (np.array(x, copy=True) for x in inputs)
    for X in (a, b):
        if kind == "site offset":
            X *= 1 + size
        elif kind == "thickness offset":  # one kind of measure only (cortical thickness)
            X[:, thick] *= 1 + size
        elif kind == "noise":
            X += rng.normal(0, 1, X.shape).astype(X.dtype) * size * sd.astype(X.dtype)
        else:  # missing
            X[rng.random(X.shape) < size] = np.nan
    return [a, a_cov, b, b_cov]


def plot_robustness(table: pd.DataFrame, path: Path, title: str) -> None:
    """Detection rate and model ROC-AUC against shift size, one line per shift kind.

    `table` has columns shift, size, flagged, auc (several rows per point are averaged);
    the unshifted point is shift "none", size 0, and starts every line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = table.groupby(["shift", "size"])[["flagged", "auc"]].mean().reset_index()
    none = mean[mean["shift"] == "none"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for kind in SHIFTS:
        part = pd.concat([none.assign(shift=kind), mean[mean["shift"] == kind]])
        axes[0].plot(part["size"], part["flagged"], marker="o", label=kind)
        axes[1].plot(part["size"], part["auc"], marker="o", label=kind)
    axes[0].axhline(0.05, color="grey", ls=":", label="alpha 0.05")
    axes[0].set(xlabel="shift size", ylabel="windows flagged as drift", ylim=(-0.02, 1.02))
    axes[1].set(xlabel="shift size", ylabel="ROC-AUC twin-like vs unrelated")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass(frozen=True)
class RobustnessRun:
    """The study's points and where it wrote them."""

    points: list[ShiftPoint]
    out: Path


def robustness(
    registry: Registry,
    reference: str,
    workspace: Path,
    settings: DriftSettings,
    window: int,
    windows: int,
    seed: int = 7,
) -> RobustnessRun:
    """Shift `NAME@ALIAS`'s held-out pairs; write robustness.json and robustness.png.

    The served ONNX model scores every pool, and the drift test compares windows of `window`
    pairs with the version's reference sample, as the server's drift check does.

    Raises:
        ValueError: The task has no shifts defined, or no held-out labels.
    """
    from sklearn.metrics import roc_auc_score

    from modelcycle.monitoring.monitor import held_out_rows, served_reference_inputs
    from modelcycle.serving.loading import load_served

    served = load_served(registry, reference, workspace / "serving", threads=1)
    if served.task not in PAIR_TASKS:
        raise ValueError(
            f"{reference} is a {served.task!r} model; robustness shifts exist for "
            f"{', '.join(PAIR_TASKS)} only."
        )
    inputs, labels, info = held_out_rows(served)
    # Drift is tested on the reference sample split in two: one half stands for the
    # version's reference, the other (shifted) for requests. The held-out pairs are too few
    # to draw windows from; they carry the labels, so they give the ROC-AUC.
    base, requests = _halves(served_reference_inputs(served), seed)
    sd = np.nanstd(np.concatenate([inputs[0], inputs[2]]), axis=0)
    thick = np.array(["thick" in name.lower() for name in info.get("features", [])], dtype=bool)
    if thick.shape != sd.shape:
        thick = np.zeros(sd.shape, dtype=bool)
    ref = served_frame(served, base)
    window = min(window, len(requests[0]))
    settings = replace(settings, min_captures=min(settings.min_captures, window))
    points = []
    for kind, size in [("none", 0.0), *((k, s) for k, sizes in SHIFTS.items() for s in sizes)]:
        pool = served_frame(served, _shift(requests, kind, size, sd, thick, seed))
        rates = flag_rate(ref, pool, served.output_names, window, windows, settings, seed)
        scored = served_frame(served, _shift(inputs, kind, size, sd, thick, seed))
        auc = float(roc_auc_score(labels, scored["probability"]))
        points.append(ShiftPoint(kind, size, auc, rates.flagged, len(pool)))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = workspace / "reports" / f"robustness-{served.name}-v{served.version}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    document = {"model": served.name, "version": served.version, "window": window,
                "windows": windows, "alpha": settings.alpha,
                "points": [asdict(p) for p in points]}  # fmt: skip
    (out / "robustness.json").write_text(json.dumps(document, indent=2))
    title = f"{served.name} v{served.version}: drift detection and ROC-AUC vs injected shift"
    plot_robustness(pd.DataFrame([asdict(p) for p in points]), out / "robustness.png", title)
    return RobustnessRun(points, out)


def served_frame(served: ServedModel, inputs: list[np.ndarray]) -> pd.DataFrame:
    """Drift features plus the served model's outputs for each row of `inputs`."""
    from modelcycle.monitoring.monitor import run_batched

    return reference_frame(served.adapter, inputs, run_batched(served, inputs))


def _shift(
    inputs: list[np.ndarray], kind: str, size: float, sd: np.ndarray, thick: np.ndarray, seed: int
) -> list[np.ndarray]:
    return inputs if kind == "none" else shifted(inputs, kind, size, sd, thick, seed)


def _halves(inputs: list[np.ndarray], seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The rows split at random into two halves (one array per input in each)."""
    order = np.random.default_rng(seed).permutation(len(inputs[0]))
    first, second = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])
    return [x[first] for x in inputs], [x[second] for x in inputs]
