"""The drift report on disk: summary JSON, a plot per column, and Evidently's HTML + JSON."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from modelcycle.embedding_columns import is_class_column
from modelcycle.monitoring.drift import DriftSummary, class_mix_test
from modelcycle.monitoring.monitor import DriftCheck


def write_drift_report(check: DriftCheck, out_dir: Path) -> list[Path]:
    """Write drift.json, drift.png, evidently.html and evidently.json into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path = out_dir / "drift.json"
    summary_path.write_text(check.summary.model_dump_json(indent=2))
    plot = plot_drift(check, out_dir / "drift.png")
    html, data = evidently_report(check, out_dir)
    return [summary_path, plot, html, data]


#: The name under which Evidently runs `class_mix_test`.
CLASS_MIX = "modelcycle_class_mix"


def tested_columns(summary: DriftSummary) -> list[str]:
    """Columns that had a test (finite statistic on both sides)."""
    return [f.name for f in summary.features if f.statistic is not None]


def evidently_report(check: DriftCheck, out_dir: Path) -> tuple[Path, Path]:
    """Evidently's data-drift report with the same tests and per-column threshold.

    KS for number columns, as its `ks`; class columns get `class_mix_test` itself,
    registered with Evidently (its own chi-square takes the reference's mix as exact).
    The dataset verdict is ours too: drift when any column drifts, so Evidently's drift
    share is one column's share (its default, half of the columns, said "no drift" beside
    our "5 of 11 columns drift").
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    _register_class_mix()
    columns = tested_columns(check.summary)
    classes = [c for c in columns if is_class_column(c)]
    definition = DataDefinition(
        numerical_columns=[c for c in columns if c not in classes], categorical_columns=classes
    )
    report = Report(
        [
            DataDriftPreset(
                drift_share=1 / max(len(columns), 1),
                method="ks",
                threshold=check.summary.threshold,
                per_column_method=dict.fromkeys(classes, CLASS_MIX),
            )
        ]
    )
    with warnings.catch_warnings():
        # its correlation widgets divide by zero on constant columns (e.g. nothing missing)
        warnings.simplefilter("ignore", RuntimeWarning)
        run = report.run(
            Dataset.from_pandas(check.current[columns], data_definition=definition),
            Dataset.from_pandas(check.reference[columns], data_definition=definition),
        )
    html, data = out_dir / "evidently.html", out_dir / "evidently.json"
    run.save_html(str(html))
    run.save_json(str(data))
    return html, data


def _register_class_mix() -> None:
    """Make `class_mix_test` an Evidently stat test named `CLASS_MIX`."""
    from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest
    from evidently.legacy.core import ColumnType

    def run(
        reference: pd.Series, current: pd.Series, kind: ColumnType, threshold: float
    ) -> tuple[float, bool]:
        p = class_mix_test(reference.to_numpy(float), current.to_numpy(float), threshold)[1]
        return p, p < threshold

    kinds = [ColumnType.Categorical, ColumnType.Numerical]
    register_stattest(StatTest(CLASS_MIX, "class mix (chi-square, permutations)", kinds), run)


def evidently_p_values(document: dict[str, Any]) -> dict[str, float]:
    """Per-column p-values (ValueDrift) from Evidently's JSON."""
    return {
        m["config"]["column"]: float(m["value"])
        for m in document["metrics"]
        if m["config"].get("type", "").endswith("ValueDrift")
    }


def evidently_drift_detected(document: dict[str, Any]) -> bool:
    """Evidently's dataset verdict from its JSON: drifted share ≥ its drift share."""
    counts = next(
        m for m in document["metrics"] if m["config"]["type"].endswith("DriftedColumnsCount")
    )
    return bool(counts["value"]["share"] >= counts["config"]["drift_share"])


def plot_drift(check: DriftCheck, path: Path) -> Path:
    """Reference vs current distribution of each column, titled with its p-value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    features = check.summary.features
    ncols = min(4, max(1, len(features)))
    nrows = math.ceil(len(features) / ncols) or 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.8 * nrows), squeeze=False)
    for ax, feature in zip(axes.flat, features, strict=False):
        _histograms(ax, check.reference[feature.name], check.current[feature.name])
        p = "n/a" if feature.p_value is None else f"{feature.p_value:.2g}"
        mark = "DRIFT " if feature.drifted else ""
        n = feature.n_reference
        rows = f", {n} ref." if n is not None and n != check.summary.n_reference else ""
        title = f"{mark}{feature.name} (p={p}{rows})"
        ax.set_title(title, color="red" if feature.drifted else "k")
    for ax in list(axes.flat)[len(features) :]:
        ax.axis("off")
    s = check.summary
    fewer = any(f.n_reference not in (None, s.n_reference) for f in features)
    fig.suptitle(
        f"{s.model} v{s.version}: {s.n_current} requests vs {s.n_reference} reference rows"
        f"{' (fewer where a column says so)' if fewer else ''}, threshold p < {s.threshold:.2g}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _histograms(ax: Any, reference: pd.Series, current: pd.Series) -> None:
    values = pd.concat([reference, current]).dropna()
    bins = 20 if values.nunique() > 1 else 1
    for data, label in ((reference, "reference"), (current, "current")):
        data = data.dropna()
        if len(data):
            ax.hist(data, bins=bins, range=_range(values), density=True, alpha=0.5, label=label)
    ax.legend(fontsize=7)


def _range(values: pd.Series) -> tuple[float, float] | None:
    if values.empty:
        return None
    lo, hi = float(values.min()), float(values.max())
    return (lo - 0.5, hi + 0.5) if lo == hi else (lo, hi)
