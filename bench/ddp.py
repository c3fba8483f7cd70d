"""Wall time of `modelcycle train` on two CPU processes (DDP, gloo) against one, side by side.

Runs the same experiment, data, folds and seed with `trainer.devices=1` and with
`trainer.devices=2 trainer.strategy=ddp` (Lightning starts the second process), alternating
the order over `--repeats` rounds so drift in the machine's load hits both alike, and prints
the median seconds (whole command, and the pipeline's own clock), their ratio, the epochs
trained and the cross-validated metrics, so speed is never read without quality.

    python bench/ddp.py --data ../shared/data/qtim [--folds 2] [--repeats 2] [--max-epochs 30]

Two processes each train on half of every epoch's pairs (a global batch twice as large),
so epochs, early stopping and metrics may differ from one process; the ratio counts that too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETUPS = {
    "1 process": ["trainer.devices=1"],
    "2 processes (ddp)": ["trainer.devices=2", "trainer.strategy=ddp"],
}


def run(extra: list[str], data: Path, args: argparse.Namespace, workspace: Path) -> dict:
    """Run one `modelcycle train` in a fresh workspace; its seconds, epochs and metrics."""
    command = [
        sys.executable,
        "-m",
        "modelcycle",
        "train",
        f"experiment={args.experiment}",
        f"data.root={data}",
        f"cv.n_folds={args.folds}",
        f"trainer.max_epochs={args.max_epochs}",
        f"workspace={workspace}",
        "trainer.progress_bar=false",
        *extra,
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, timeout=3600)
    seconds = time.perf_counter() - started
    summary = json.loads(next((workspace / "reports").glob("*/summary.json")).read_text())
    epochs = [_epochs(Path(f["best_epoch_checkpoint"])) for f in summary["folds"]]
    means = {m: v[0] for m, v in summary["aggregate"]["model"].items()}
    return {"seconds": seconds, "pipeline": summary["seconds"], "epochs": epochs, **means}


def _epochs(checkpoint: Path) -> int:
    """The epoch of a fold's best checkpoint, counted from 1."""
    import torch

    return int(torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"]) + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="QTIM root")
    parser.add_argument("--experiment", default="twins")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-epochs", type=int, default=30)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {name: [] for name in SETUPS}
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeats):
            names = list(SETUPS) if round_ % 2 == 0 else list(reversed(SETUPS))
            for name in names:
                workspace = Path(tmp) / f"{round_}-{name.split()[0]}"
                results[name].append(run(SETUPS[name], args.data.resolve(), args, workspace))
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    base_name = next(iter(SETUPS))
    base = statistics.median(r["seconds"] for r in results[base_name])
    base_pipeline = statistics.median(r["pipeline"] for r in results[base_name])
    print(
        f"{'setup':<19}{'seconds':>9}{'ratio':>7}{'pipeline s':>12}{'ratio':>7}"
        "  best epoch    AUC twin  top-1"
    )
    for name, rows in results.items():
        seconds = statistics.median(r["seconds"] for r in rows)
        pipeline = statistics.median(r["pipeline"] for r in rows)
        last = rows[-1]
        print(
            f"{name:<19}{seconds:>9.1f}{seconds / base:>7.2f}{pipeline:>12.1f}"
            f"{pipeline / base_pipeline:>7.2f}  {last['epochs']!s:<13}"
            f"{last['auc_twin_vs_unrelated']:.3f}     {last['top1']:.3f}"
        )
    for name, rows in results.items():  # the spread behind each median
        print(f"{name}: runs of " + ", ".join(f"{r['seconds']:.1f}" for r in rows) + " s")


if __name__ == "__main__":
    main()
