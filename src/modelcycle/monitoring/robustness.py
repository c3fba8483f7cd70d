"""Robustness: controlled shifts injected into a registered model's data, metric and drift per size.

The shifts and the metric are the task's (its serving adapter's `shift_sizes`, `shift` and
`held_out_metric`): for twins a site offset, a thickness-only offset, noise and missing
regions, scored by ROC-AUC; for images darkening and blur, scored by accuracy. At each size
the study reports the model's metric on the shifted held-out rows and the share of request
windows the drift test flags.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from modelcycle.monitoring.calibration import flag_rate
from modelcycle.monitoring.drift import DriftSettings, reference_frame
from modelcycle.report_folders import new_report_dir

if TYPE_CHECKING:
    from modelcycle.registry import Registry
    from modelcycle.serving.loading import ServedModel, VariantChoice


@dataclass(frozen=True)
class ShiftPoint:
    """One shift kind at one size: how the model and the drift test fared."""

    shift: str
    size: float
    metric: float
    flagged: float
    pool: int


#: Each shift kind's marker and dash in the robustness plot, in turn.
MARKERS = ("o", "s", "^", "D", "v", "P")
DASHES = ("-", "--", "-.", ":")


def plot_robustness(table: pd.DataFrame, path: Path, title: str, metric: str) -> None:
    """Detection rate and the model's metric against shift step, one line per shift kind.

    `table` has columns shift, size, flagged, metric (several rows per point are averaged);
    the unshifted point is shift "none", size 0, and starts every line. Kinds measure size in
    units of their own (a share of brightness, a blur's sigma in pixels), so the x axis is
    each kind's step (none, then its sizes in order) and the legend gives the sizes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = table.groupby(["shift", "size"])[["flagged", "metric"]].mean().reset_index()
    none = mean[mean["shift"] == "none"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    steps = 1
    kinds = [k for k in dict.fromkeys(table["shift"]) if k != "none"]
    for i, kind in enumerate(kinds):
        shifted = mean[mean["shift"] == kind].sort_values("size")
        part = pd.concat([none.assign(shift=kind), shifted])
        label = f"{kind} ({', '.join(f'{s:g}' for s in shifted['size'])})"
        # Kinds often meet (every window flagged, or none): each has its own marker and
        # dash and sits a little beside the others, so no line hides another.
        x = np.arange(len(part)) + (i - (len(kinds) - 1) / 2) * 0.06
        style = {"marker": MARKERS[i % len(MARKERS)], "ls": DASHES[i % len(DASHES)]}
        steps = max(steps, len(part))
        axes[0].plot(x, part["flagged"], label=label, **style)
        axes[1].plot(x, part["metric"], label=label, **style)
    axes[0].axhline(0.05, color="grey", ls=":", label="alpha 0.05")
    axes[0].set(ylabel="windows flagged as drift", ylim=(-0.02, 1.02))
    axes[1].set(ylabel=metric)
    for ax in axes:
        ax.set_xticks(range(steps), ["none", *(str(n) for n in range(1, steps))])
        ax.set_xlabel("shift step (each kind's sizes in the legend)")
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
    metric: str
    #: Rows per window: the one asked for (the rows they are drawn from when fewer), or by
    #: default `DEFAULT_WINDOW` or half the rows they are drawn from.
    window: int
    #: Held-out rows the metric is computed on.
    held_out: int = 0
    #: The exported file (fp32 or int8) that was shifted and scored.
    variant: str = "fp32"


#: Rows per drift-test window unless asked otherwise (the server's own windows are larger).
DEFAULT_WINDOW = 50


def robustness(
    registry: Registry,
    reference: str,
    workspace: Path,
    settings: DriftSettings,
    window: int | None,
    windows: int,
    seed: int = 7,
    variant: VariantChoice | None = None,
    cache: Path | None = None,
) -> RobustnessRun:
    """Shift `NAME@ALIAS`'s held-out rows; write robustness.json and robustness.png.

    The served ONNX model (`variant`, as `serve.variant` says; fp32 when None) scores every
    pool, and the drift test compares windows of `window` rows with the version's reference
    sample, as the server's drift check does. `window` None takes `DEFAULT_WINDOW` rows, or
    half the rows they are drawn from when that is fewer, so that windows differ. The
    version's files are copied to `cache` (`serve.cache_dir`; None: the workspace's
    `serving/`).

    Raises:
        ValueError: The task defines no shifts, or the held-out rows have no labels.
    """
    from modelcycle.monitoring.monitor import held_out_rows, run_batched, served_reference_inputs
    from modelcycle.serving.loading import load_served, split_alias

    split_alias(reference, "robustness")  # the form first, in this command's words
    cache = cache or workspace / "serving"
    served = load_served(registry, reference, cache, threads=1, variant=variant)
    adapter = served.adapter
    if not adapter.shift_sizes:
        raise ValueError(
            f"{reference} is a {served.task!r} model, whose task defines no robustness shifts "
            "(its serving adapter's shift_sizes and shift)."
        )
    inputs, labels = held_out_rows(served)
    # Drift is tested on the reference sample split in two: one half stands for the
    # version's reference, the other (shifted) for requests. The held-out rows are too few
    # to draw windows from; they carry the labels, so they give the metric.
    base, requests = _halves(served_reference_inputs(served), seed)
    ref = served_frame(served, base)
    drawn_from = len(requests[0])
    window = min(DEFAULT_WINDOW, max(2, drawn_from // 2)) if window is None else window
    window = min(window, drawn_from)
    settings = replace(settings, min_captures=min(settings.min_captures, window))
    sizes = [("none", 0.0), *((k, s) for k, sizes in adapter.shift_sizes.items() for s in sizes)]
    points = []
    for kind, size in sizes:
        pool = served_frame(served, _shift(served, requests, kind, size, seed))
        rates = flag_rate(ref, pool, served.answer_outputs, window, windows, settings, seed)
        outputs = run_batched(served, _shift(served, inputs, kind, size, seed))
        metric = adapter.held_out_metric(outputs, labels)
        points.append(ShiftPoint(kind, size, metric, rates.flagged, len(pool)))
    out = new_report_dir(workspace, f"robustness-{served.name}-v{served.version}")
    document = {"model": served.name, "version": served.version,
                "variant": served.variant, "window": window, "windows": windows,
                "alpha": settings.alpha, "metric": adapter.held_out_metric_name,
                "points": [asdict(p) for p in points]}  # fmt: skip
    (out / "robustness.json").write_text(json.dumps(document, indent=2))
    title = (
        f"{served.name} v{served.version} ({served.variant}): drift detection and model "
        "metric vs injected shift"
    )
    table = pd.DataFrame([asdict(p) for p in points])
    plot_robustness(table, out / "robustness.png", title, adapter.held_out_metric_name)
    return RobustnessRun(
        points, out, adapter.held_out_metric_name, window, len(inputs[0]), served.variant
    )


def served_frame(served: ServedModel, inputs: list[np.ndarray]) -> pd.DataFrame:
    """Drift features plus the served model's outputs for each row of `inputs`."""
    from modelcycle.monitoring.monitor import run_batched

    outputs = run_batched(served, inputs)
    return reference_frame(served.adapter, inputs, outputs, served.monitor_outputs)


def _shift(
    served: ServedModel, inputs: list[np.ndarray], kind: str, size: float, seed: int
) -> list[np.ndarray]:
    return inputs if kind == "none" else served.adapter.shift(inputs, kind, size, seed)


def _halves(inputs: list[np.ndarray], seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The rows split at random into two halves (one array per input in each)."""
    order = np.random.default_rng(seed).permutation(len(inputs[0]))
    first, second = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])
    return [x[first] for x in inputs], [x[second] for x in inputs]
