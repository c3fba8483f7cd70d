"""MkDocs hook: draw each task page's result plots at build time from its committed record.

A record (`docs/results/<name>.json`) is written from a real run's report folder by
`modelcycle report docs-results`; a page shows it where it says `<!-- results: <name> -->`.
The PNGs exist only in the built site, never in the repository.
"""

from __future__ import annotations

import io
import math
import posixpath
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

from modelcycle.evaluation.curves import points
from modelcycle.evaluation.results import read_record

RESULTS = "results"
MARKER = re.compile(r"<!--\s*results:\s*([\w-]+)\s*-->")
COLOURS = {"model": "tab:blue", "baseline": "tab:orange"}
Record = dict[str, Any]


def records(docs_dir: Path) -> dict[str, Record]:
    """Every results record under `docs/results/`, by file stem."""
    return {p.stem: read_record(p) for p in sorted((docs_dir / RESULTS).glob("*.json"))}


Drawing = Callable[[Record], Figure]


def figures(record: Record) -> dict[str, tuple[str, Drawing]]:
    """Name → (caption, drawing) of each plot the record has data for."""
    curves = record["folds"][0]["curves"].get("model", {})
    out: dict[str, tuple[str, Drawing]] = {
        "folds": ("Model and baseline on every test fold; bars are mean ± std", _folds)
    }
    for key, (name, caption, draw) in CURVE_PLOTS.items():
        if key in curves:
            out[name] = (caption, draw)
    return out


def render(figure: Figure) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def results_markdown(name: str, record: Record, page_uri: str) -> str:
    """What a page shows for one record: where the numbers come from, a table, the plots."""
    up = posixpath.relpath(RESULTS, posixpath.dirname(page_uri) or ".")
    lines = [_provenance(name, record, up), "", *_fold_table(record), ""]
    for plot, (caption, _) in figures(record).items():
        lines += [f"![{caption}]({up}/{name}/{plot}.png)", f"*{caption}.*", ""]
    return "\n".join(lines)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add every record's plots to the site as generated PNG files."""
    for name, record in records(Path(config.docs_dir)).items():
        for plot, (_, draw) in figures(record).items():
            png = render(draw(record))
            files.append(File.generated(config, f"{RESULTS}/{name}/{plot}.png", content=png))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Replace each `<!-- results: name -->` marker with that record's section."""
    found = records(Path(config.docs_dir))

    def section(match: re.Match[str]) -> str:
        name = match[1]
        if name not in found:
            raise ValueError(
                f"{page.file.src_uri} shows results {name!r}, but docs/{RESULTS}/{name}.json "
                f"does not exist (have: {', '.join(found) or 'none'}); write it with "
                f"`modelcycle report docs-results REPORT_DIR --out docs/{RESULTS}/{name}.json`."
            )
        return results_markdown(name, found[name], page.file.src_uri)

    return MARKER.sub(section, markdown)


def _provenance(name: str, record: Record, up: str) -> str:
    folds = len(record["folds"])
    command = f"`{record['command']}`" if record["command"] else "a run"
    return (
        f"Drawn at build time from [`docs/{RESULTS}/{name}.json`]({up}/{name}.json), the "
        f"record of {command} (report `{record['report']}`, {folds} "
        f"fold{'s' if folds > 1 else ''}; {record['seconds']:.0f} s from reading the data to "
        f"the final fit, without start-up, registration and export), "
        f"written by `modelcycle report docs-results`."
    )


def _fold_table(record: Record) -> list[str]:
    folds = record["folds"]
    header = " | ".join(f"fold {f['fold']}" for f in folds)
    lines = [f"| metric | scorer | {header} |", "|---|---|" + "---:|" * len(folds)]
    for metric in record["metrics"]:
        for scorer in COLOURS:
            cells = " | ".join(_number(f[scorer].get(metric)) for f in folds)
            lines.append(f"| {metric if scorer == 'model' else ''} | {scorer} | {cells} |")
    tested = ", ".join(str(f["n_test"]) for f in folds)
    return [*lines, "", f"Test rows per fold: {tested}."]


def _number(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"


def _folds(record: Record) -> Figure:
    metrics = record["metrics"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.1 * len(metrics) + 0.6, 3.4))
    for ax, metric in zip(np.atleast_1d(axes), metrics, strict=True):
        values = {s: [_value(f[s].get(metric)) for f in record["folds"]] for s in COLOURS}
        for pair in zip(*values.values(), strict=True):
            ax.plot([0, 1], pair, color="grey", lw=0.8, marker="o", ms=3)
        for x, scorer in enumerate(COLOURS):
            mean, std = record["aggregate"][scorer][metric]
            ax.bar(x, mean, 0.5, color=COLOURS[scorer], alpha=0.35)
            if std is not None:
                ax.errorbar(x, mean, yerr=std, color=COLOURS[scorer], capsize=4, lw=2)
        ax.set_xticks([0, 1], list(COLOURS))
        ax.set_title(metric, fontsize=9)
    return fig


def _value(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _with_mean(record: Record, scorer: str, metric: str, name: str) -> str:
    """A legend label with the metric's mean over folds, when the record has that metric."""
    mean = record["aggregate"][scorer].get(metric, [None])[0]
    return scorer if mean is None else f"{scorer} ({name} {mean:.3f})"


def _scorer_curves(record: Record, key: str) -> dict[str, list[Any]]:
    return {s: [f["curves"][s][key] for f in record["folds"]] for s in COLOURS}


def _roc(record: Record) -> Figure:
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    for scorer, rocs in _scorer_curves(record, "roc").items():
        label = _with_mean(record, scorer, "auc_twin_vs_unrelated", "mean AUC")
        for k, (fpr, tpr) in enumerate(rocs):
            shown = label if k == 0 else None
            ax.plot(points(fpr), points(tpr), color=COLOURS[scorer], lw=1, alpha=0.8, label=shown)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title("Twin-like vs unrelated pairs, one line per fold", fontsize=10)
    ax.legend(loc="lower right")
    return fig


def _retrieval(record: Record) -> Figure:
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    for scorer, curves in _scorer_curves(record, "retrieval").items():
        rows = np.array([points(c) for c in curves])
        k = np.arange(1, rows.shape[1] + 1)
        ax.plot(k, np.nanmean(rows, axis=0), color=COLOURS[scorer], marker="o", ms=3, label=scorer)
        low, high = np.nanmin(rows, axis=0), np.nanmax(rows, axis=0)
        ax.fill_between(k, low, high, color=COLOURS[scorer], alpha=0.15)
    ax.set(xlabel="k", ylabel="co-twin within top k", ylim=(0, 1.02))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Co-twin retrieval: mean over folds, band = range", fontsize=10)
    ax.legend(loc="lower right")
    return fig


def _similarity(record: Record) -> Figure:
    curves = _scorer_curves(record, "scores")
    fig, axes = plt.subplots(1, len(curves), figsize=(4.4 * len(curves), 3.8), sharey=True)
    for ax, (scorer, folds) in zip(np.atleast_1d(axes), curves.items(), strict=True):
        for relation in folds[0]:
            _ecdf(ax, [fold[relation] for fold in folds], relation)
        ax.set(xlabel="pair similarity", title=scorer)
        ax.legend(fontsize=7, loc="upper left")
    np.atleast_1d(axes)[0].set_ylabel("share of pairs at or below")
    return fig


def _ecdf(ax: Axes, folds: list[Any], relation: str) -> None:
    """One relation's distribution pooled over folds; a sampled fold's values weigh n/sample."""
    samples = [(np.array(points(f)), f["n"] if isinstance(f, dict) else len(f)) for f in folds]
    samples = [(s, n) for s, n in samples if len(s)]
    if not samples:
        return
    values = np.concatenate([s for s, _ in samples])
    weights = np.concatenate([np.full(len(s), n / len(s)) for s, n in samples])
    order = np.argsort(values, kind="stable")
    share = np.cumsum(weights[order]) / weights.sum()
    n = sum(n for _, n in samples)
    ax.step(values[order], share, where="post", lw=1.5, label=f"{relation} (n={n})")


def _reliability(record: Record) -> Figure:
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0, 1], [0, 1], "k:", label="calibrated")
    for scorer, folds in _scorer_curves(record, "reliability").items():
        counts = np.sum([points(f["count"]) for f in folds], axis=0)
        weighted = {
            key: np.sum([np.multiply(points(f[key]), points(f["count"])) for f in folds], axis=0)
            for key in ("confidence", "accuracy")
        }
        used = counts > 0
        conf, acc = (weighted[k][used] / counts[used] for k in ("confidence", "accuracy"))
        label = _with_mean(record, scorer, "ece", "ECE")
        ax.plot(conf, acc, "o-", color=COLOURS[scorer], label=label)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
    ax.set_title("Reliability, test rows of every fold", fontsize=10)
    ax.legend(loc="upper left")
    return fig


def _recall(record: Record) -> Figure:
    return _per_class(record, "recall", "recall")


def _dice(record: Record) -> Figure:
    return _per_class(record, "dice", "Dice")


def _per_class(record: Record, key: str, name: str) -> Figure:
    """Bars of a per-class detail (recall, Dice), mean over folds; a class never scored has none."""
    curves = _scorer_curves(record, key)
    classes = record["folds"][0]["curves"]["model"]["classes"]
    x = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.3 * len(classes) + 2.5), 3.6))
    for k, (scorer, folds) in enumerate(curves.items()):
        rows = np.array([points(f) for f in folds])
        mean = np.array(
            [np.nanmean(c) if np.isfinite(c).any() else np.nan for c in rows.T], dtype=float
        )
        ax.bar(x + (k - 0.5) * 0.4, mean, 0.4, color=COLOURS[scorer], label=scorer)
    if len(classes) <= 30:  # more names would overprint each other
        ax.set_xticks(x, classes, rotation=90 if len(classes) > 8 else 0, fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel=name)
    ax.set_title(f"{name[0].upper()}{name[1:]} per class (mean over folds)", fontsize=10)
    ax.legend()
    return fig


def _confusion(record: Record) -> Figure:
    classes = record["folds"][0]["curves"]["model"]["classes"]
    curves = _scorer_curves(record, "confusion")
    fig, axes = plt.subplots(1, len(curves), figsize=(4.4 * len(curves), 4.2))
    for ax, (scorer, folds) in zip(np.atleast_1d(axes), curves.items(), strict=True):
        matrix = np.sum([np.array(f, float) for f in folds], axis=0)
        rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)  # recall per row
        ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
        if len(classes) <= 30:  # more names would overprint each other
            ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=8)
            ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set(xlabel="predicted", ylabel="true", title=scorer)
    return fig


#: Detail key in a fold's curves → (plot name, caption, drawing).
CURVE_PLOTS: dict[str, tuple[str, str, Drawing]] = {
    "roc": ("roc", "ROC curves of every test fold", _roc),
    "retrieval": ("retrieval", "Co-twin retrieval curves", _retrieval),
    "scores": (
        "similarity",
        "Pair similarity by relation, test pairs of every fold",
        _similarity,
    ),
    "reliability": ("reliability", "Reliability diagram over every fold's test rows", _reliability),
    "confusion": ("confusion", "Confusion matrices, rows normalized to recall", _confusion),
    "recall": ("recall", "Recall per class", _recall),
    "dice": ("dice", "Dice per class", _dice),
}
