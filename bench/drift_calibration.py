"""Drift calibration and robustness on real QTIM: false alarms, detections, model metric.

For each family-grouped fold, the reference sample is drawn from the training families as a
served twins model saves it (`reference.npz`), and windows of requests are drawn from the
test fold's pairs (families the model never saw): as they are (false alarms), and with a
shift injected into both subjects' measures (detections), the twins adapter's shifts: a
scanner/site offset (every measure times 1+s), the same offset of the cortical thickness
measures only, measurement noise (Gaussian, s times each measure's sd) and missing measures
(a share s of each subject's measures absent). Beside each shift size: the served model's
ROC-AUC (twin-like vs unrelated) on the shifted pool. The model is the untrained siamese
encoder, which starts exactly at the correlation baseline; its embedding's principal
components are drift columns as in a saved model.

    python bench/drift_calibration.py --data ../shared/data/qtim [--window 50] [--windows 200]
        [--reference held-out]  # the validation families' pairs alone as the reference
        [--without pc1 pc2 pc3]  # leave drift columns out
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from modelcycle.data.qtim import QTIMSource
from modelcycle.embeddings import project_embeddings
from modelcycle.models.encoders import MLPEncoder
from modelcycle.monitoring.calibration import flag_rate
from modelcycle.monitoring.drift import DriftSettings, reference_frame
from modelcycle.monitoring.robustness import plot_robustness
from modelcycle.servable import ServableModel
from modelcycle.tasks.twins import TwinsData, TwinsTask, _labelled_pairs
from modelcycle.tasks.twins_serving import TwinsServing

OUTPUTS = ("probability", "similarity")


def frame(servable: ServableModel, adapter: TwinsServing, inputs: list[np.ndarray]) -> pd.DataFrame:
    """Drift features and the model's outputs for each pair."""
    with torch.no_grad():
        outputs = servable.module(*(torch.as_tensor(x) for x in inputs))
    named = {n: o.numpy() for n, o in zip(servable.output_names, outputs, strict=True)}
    return reference_frame(adapter, inputs, named, servable.monitor_outputs)


def fold_rows(
    task: TwinsTask, data: TwinsData, fold_index: int, args: argparse.Namespace
) -> list[dict[str, object]]:
    """Flag rates and AUC for every shift of one fold."""
    fold = task.folds(data, 5, seed=42)[fold_index]
    servable = project_embeddings(task.servable(task.model(data, fold), data, fold))
    assert servable.reference is not None
    adapter = TwinsServing(servable.info)
    sample = servable.held_out if args.reference == "held-out" else servable.reference
    reference = frame(servable, adapter, sample).drop(columns=args.without)
    pairs, labels = _labelled_pairs(data.relations, fold.test, 1, seed=2)
    X, C = data.X.astype(np.float32), data.covariates.astype(np.float32)
    pool_inputs = [X[pairs[:, 0]], C[pairs[:, 0]], X[pairs[:, 1]], C[pairs[:, 1]]]
    settings = DriftSettings(alpha=args.alpha, min_captures=2)
    rows = []
    for kind, sizes in [("site offset", (0.0,)), *adapter.shift_sizes.items()]:
        for size in sizes:
            pool = frame(servable, adapter, adapter.shift(pool_inputs, kind, size, fold_index))
            pool = pool.drop(columns=args.without)
            rates = flag_rate(reference, pool, OUTPUTS, args.window, args.windows, settings, seed=7)
            auc = roc_auc_score(labels, pool["probability"])
            name = "none" if size == 0 else kind
            rows.append({"fold": fold_index, "shift": name, "size": size, "flagged": rates.flagged,
                         "metric": auc, "pool": len(pool), "reference": len(reference),
                         "columns": rates.per_column})  # fmt: skip
    return rows


def null_pools(
    columns: int, reference: int, pool: int, args: argparse.Namespace, pools: int = 40
) -> np.ndarray:
    """False-alarm rate of each of `pools` pools drawn from the reference's own distribution.

    Independent Gaussian columns, so the KS test's assumptions hold exactly: what spread of
    per-pool rates chance alone gives when windows come from one fixed pool of `pool` rows.
    """
    rng = np.random.default_rng(0)
    names = [f"c{k}" for k in range(columns)]
    settings = DriftSettings(alpha=args.alpha, min_captures=2)
    rates = []
    for k in range(pools):
        ref = pd.DataFrame(rng.normal(size=(reference, columns)), columns=names)
        rows = pd.DataFrame(rng.normal(size=(pool, columns)), columns=names)
        rates.append(flag_rate(ref, rows, [], args.window, args.windows, settings, k).flagged)
    return np.array(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="QTIM root")
    parser.add_argument("--window", type=int, default=50, help="requests per window")
    parser.add_argument("--windows", type=int, default=200, help="windows per shift and fold")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument(
        "--reference",
        choices=("reference", "held-out"),
        default="reference",
        help="compare with reference.npz (default) or with the held-out pairs alone",
    )
    parser.add_argument("--without", nargs="*", default=[], help="columns left out (ablation)")
    parser.add_argument("--out", type=Path, default=Path(".modelcycle/reports/drift-calibration"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = TwinsTask(QTIMSource(root=args.data.resolve()), encoder=MLPEncoder)
    data, _ = task.load()
    rows = [row for k in range(5) for row in fold_rows(task, data, k, args)]
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "calibration.json").write_text(json.dumps(rows, indent=2, default=float))
    adapter_metric = TwinsServing.held_out_metric_name
    title = "QTIM: drift detection and model metric vs injected shift (mean of 5 folds)"
    plot_robustness(table, args.out / "calibration.png", title, adapter_metric)
    wide = table.pivot_table(index=["shift", "size"], columns="fold", values="flagged")
    wide["mean"] = wide.mean(axis=1)
    print(f"Share of {args.window}-request windows flagged (alpha {args.alpha}, Bonferroni):")
    print((100 * wide).round(1).to_string())
    auc = table.groupby(["shift", "size"])["metric"].mean().round(3)
    print("\nROC-AUC on the pool, mean of folds:")
    print(auc.to_string())
    none = table[table["shift"] == "none"].iloc[0]
    n_columns = len(none["columns"])
    spread = null_pools(n_columns, int(none["reference"]), int(none["pool"]), args)
    print(
        f"\nChance alone, {len(spread)} pools of {int(none['pool'])} rows from the reference's "
        f"own distribution ({n_columns} independent columns): false alarms per pool "
        f"{np.percentile(spread, 10):.1%} (10th pct) / {np.median(spread):.1%} (median) / "
        f"{np.percentile(spread, 90):.1%} (90th pct), mean {spread.mean():.1%}; "
        f"{(spread > 0.05).mean():.0%} of pools above 5 %."
    )
    print(f"\nPlot and JSON: {args.out}")


if __name__ == "__main__":
    main()
