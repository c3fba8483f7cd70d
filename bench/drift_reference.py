"""False alarms of the drift test with a trained model: reference rows it trained on or not.

A model answers the rows it was fitted on more confidently than any new one, and embeds them
elsewhere: a reference whose outputs come from training rows flags ordinary new traffic as
drift. This trains a task's model on one cross-validation fold and tests windows of that
fold's test rows (never seen: what new requests look like, unshifted) against two references
side by side:

  trained   the reference as saved models drew it before: training rows only;
  unseen    as they draw it now (`unseen_first`): validation rows first, topped up with
            training rows whose outputs are left out (`ServableModel.reference_unseen`).

Every window is unshifted, so every flag is a false alarm (the aim: at most alpha, 5 %).

    python bench/drift_reference.py [--task node] [--window 40] [--windows 200]

The node task runs on its offline stand-in (Wiki-CS's format, 2,000 articles) in a
throwaway workspace, in about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from modelcycle.config import assemble, compose_config
from modelcycle.data.ego_graphs import ego_graphs
from modelcycle.embeddings import project_embeddings
from modelcycle.monitoring.calibration import flag_rate
from modelcycle.monitoring.drift import DriftSettings, reference_frame
from modelcycle.servable import ServableModel
from modelcycle.tasks.base import seeded_draw
from modelcycle.tasks.node import NodeTask
from modelcycle.training import TrainerSettings, fit

START = time.perf_counter()


def say(text: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f}s] {text}", flush=True)


def frame(servable: ServableModel, inputs: list[np.ndarray], unseen: int | None) -> pd.DataFrame:
    """Drift features and outputs of `inputs` rows, as the server's reference builds them."""
    from modelcycle.tasks.node_serving import NodeServing

    with torch.no_grad():
        outputs = servable.module(*(torch.as_tensor(x) for x in inputs))
    named = {n: o.numpy() for n, o in zip(servable.output_names, outputs, strict=True)}
    adapter = NodeServing(servable.info)
    return reference_frame(adapter, inputs, named, servable.monitor_outputs, unseen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", choices=("node",), default="node")
    parser.add_argument("--window", type=int, default=40, help="requests per window")
    parser.add_argument("--windows", type=int, default=200, help="windows per reference")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--fold", type=int, default=0, help="cross-validation fold to train")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-drift-reference-") as scratch:
        workspace = Path(scratch) / "ws"
        overrides = ["experiment=node_wikics", "data.synthetic=true", f"workspace={workspace}"]
        task = assemble(compose_config(overrides)).task
        assert isinstance(task, NodeTask)
        data, _ = task.load()
        fold = task.folds(data, 5, seed=42)[args.fold]
        say(
            f"{task.name}: fold {args.fold}, {len(fold.train)} training, {len(fold.val)} "
            f"validation and {len(fold.test)} test rows; training"
        )
        module = task.model(data, fold)
        settings = TrainerSettings(progress_bar=False)
        checkpoints = workspace / "checkpoints"
        fit(module, task.datamodule(data, fold, 42), settings, task.monitor, checkpoints, [])
        servable = project_embeddings(task.servable(module, data, fold))
        assert servable.reference is not None
        unseen_rows = servable.reference_unseen or 0

        def ego(rows: np.ndarray) -> list[np.ndarray]:
            return list(ego_graphs(data.features, data.neighbors, rows, task.max_links))

        # as references were drawn before: training rows only, every output kept
        trained = ego(seeded_draw(fold.train, task.reference_rows))
        say(
            f"references: {len(trained[0])} trained-on rows; {unseen_rows} unseen rows and "
            f"{len(servable.reference[0]) - unseen_rows} trained-on"
        )
        pool_inputs = ego(seeded_draw(fold.test, 1000))
        rows: list[tuple[str, float, list[tuple[str, float]]]] = []
        settings_drift = DriftSettings(alpha=args.alpha, min_captures=2)
        pool = frame(servable, pool_inputs, None)
        for name, inputs, unseen in (
            ("trained", trained, None),
            ("unseen", servable.reference, servable.reference_unseen),
        ):
            reference = frame(servable, inputs, unseen)
            rates = flag_rate(
                reference, pool, ["confidence", "probabilities"], args.window, args.windows,
                settings_drift, seed=7,
            )  # fmt: skip
            worst = sorted(rates.per_column.items(), key=lambda kv: -kv[1])[:3]
            rows.append((name, rates.flagged, worst))
            say(f"{name:8s} false alarms {rates.flagged:6.1%}; most flagged: {worst}")
    (_, trained_rate, _), (_, unseen_rate, _) = rows
    print()
    print(f"windows of {args.window} test rows, {args.windows} per reference, alpha {args.alpha}")
    print(f"false alarms, reference of trained-on rows:   {trained_rate:6.1%}")
    print(f"false alarms, reference of unseen rows first: {unseen_rate:6.1%}")
    ratio = unseen_rate / trained_rate if trained_rate else float("nan")
    print(f"unseen ÷ trained-on: {ratio:.2f} (aim: unseen at most {args.alpha:.0%})")


if __name__ == "__main__":
    main()
