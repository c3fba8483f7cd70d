"""Cross-validation summaries: per-fold tables, mean ± std, markdown, JSON and a bar plot."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

SCORERS = ("model", "baseline")


@dataclass
class FoldResult:
    """Metrics of the model and the baseline on one test fold."""

    fold: int
    n_test: int
    model: dict[str, float]
    baseline: dict[str, float]
    best_epoch_checkpoint: str = ""


@dataclass
class CVReport:
    """Everything a cross-validated run reports."""

    task: str
    run_name: str
    metrics: tuple[str, ...]
    primary_metric: str
    folds: list[FoldResult] = field(default_factory=list)
    reference: dict[str, float] = field(default_factory=dict)
    data: dict[str, object] = field(default_factory=dict)
    seconds: float = 0.0
    #: What one row is (`Task.unit`): "Test tiles per fold".
    unit: str = "rows"
    #: The MLflow run that holds it: `modelcycle evaluate` and `release` accept its folder.
    run_id: str = ""

    def aggregate(self) -> dict[str, dict[str, tuple[float, float]]]:
        """Scorer → metric → (mean, std over folds), NaN folds ignored."""
        out: dict[str, dict[str, tuple[float, float]]] = {}
        for scorer in SCORERS:
            out[scorer] = {}
            for metric in self.metrics:
                values = np.array([getattr(f, scorer)[metric] for f in self.folds], float)
                values = values[~np.isnan(values)]
                mean = float(values.mean()) if len(values) else float("nan")
                std = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
                out[scorer][metric] = (mean, std)
        return out

    def to_markdown(self) -> str:
        """The summary table: a row per metric and scorer, a column per fold, then mean ± std."""
        folds = " | ".join(f"fold {f.fold}" for f in self.folds)
        lines = [
            f"# {self.task}: {self.run_name}",
            "",
            f"| metric | scorer | {folds} | mean ± std |",
            "|---|---|" + "---:|" * (len(self.folds) + 1),
        ]
        agg = self.aggregate()
        for metric in self.metrics:
            for scorer in SCORERS:
                cells = " | ".join(f"{getattr(f, scorer)[metric]:.3f}" for f in self.folds)
                lines.append(
                    f"| {metric} | {scorer} | {cells} | {mean_std(*agg[scorer][metric])} |"
                )
        tested = ", ".join(str(f.n_test) for f in self.folds)
        lines += ["", f"Test {self.unit} per fold: {tested}."]
        if len(self.folds) == 1:
            lines += ["", "One fold (a single test split): no spread over folds to report."]
        if self.reference:
            ref = ", ".join(f"{k} {v:.3f}" for k, v in self.reference.items())
            lines += ["", f"Baseline over the whole dataset (no folds): {ref}."]
        lines += ["", f"Wall time (data, folds and final fit): {self.seconds:.0f} s."]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> list[Path]:
        """Write summary.md, summary.json, metrics.json and summary.png into `out_dir`.

        metrics.json holds only the mean of each metric per scorer (for `dvc metrics`).
        """
        out_dir.mkdir(parents=True, exist_ok=True)
        md, js, means = (out_dir / n for n in ("summary.md", "summary.json", "metrics.json"))
        md.write_text(self.to_markdown())
        agg = self.aggregate()
        payload = asdict(self) | {"aggregate": agg}
        js.write_text(json.dumps(_strict_json(payload), indent=2, default=str, allow_nan=False))
        flat = {scorer: {m: mean for m, (mean, _) in agg[scorer].items()} for scorer in agg}
        means.write_text(json.dumps(_strict_json(flat), indent=2, allow_nan=False))
        return [md, js, means, self._bar_plot(out_dir / "summary.png")]

    def _bar_plot(self, path: Path) -> Path:
        agg = self.aggregate()
        x = np.arange(len(self.metrics))
        fig, ax = plt.subplots(figsize=(1.8 * len(self.metrics) + 2, 3.8))
        for offset, scorer in zip((-0.2, 0.2), SCORERS, strict=True):
            means = [agg[scorer][m][0] for m in self.metrics]
            stds = [agg[scorer][m][1] for m in self.metrics]
            ax.bar(x + offset, means, 0.4, yerr=stds, capsize=3, label=scorer)
        ax.set_xticks(x, self.metrics, rotation=15)
        over = f"mean ± std over {len(self.folds)} folds" if len(self.folds) > 1 else "one fold"
        ax.set(ylim=(0, 1.05), title=f"{self.task}: {over}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def mean_std(mean: float, std: float) -> str:
    """Mean ± std, or only the mean when there is no spread to report (one fold)."""
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def _strict_json(value: Any) -> Any:
    """NaN and infinities become null: summary.json stays valid for strict JSON parsers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(v) for v in value]
    return value
