"""Wall time of the twins pipeline per encoder, side by side, as ratios to the MLP encoder.

Runs `modelcycle pipeline` for each experiment on the same data and folds, one after the
other in this process's machine, and prints seconds, ratio to the first experiment, and the
cross-validated metrics so speed is never read without quality.

    python bench/twins_encoders.py --data ../shared/data/qtim [--folds 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXPERIMENTS = ("twins", "twins_graph")


def run(experiment: str, data: Path, folds: int, workspace: Path) -> tuple[float, dict[str, float]]:
    """Run one pipeline in a fresh workspace; return seconds and mean model metrics."""
    command = [
        sys.executable,
        "-m",
        "modelcycle",
        "pipeline",
        experiment,
        f"data.root={data}",
        f"cv.n_folds={folds}",
        f"workspace={workspace}",
        "trainer.progress_bar=false",
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    summary = next((workspace / "reports").glob("*/summary.json"))
    agg = json.loads(summary.read_text())["aggregate"]["model"]
    return seconds, {m: v[0] for m, v in agg.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="QTIM root")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in EXPERIMENTS:
            rows.append((name, *run(name, args.data.resolve(), args.folds, Path(tmp) / name)))
    base = rows[0][1]
    print(f"{'experiment':<14}{'seconds':>9}{'ratio':>7}  AUC twin  top-1")
    for name, seconds, metrics in rows:
        print(
            f"{name:<14}{seconds:>9.1f}{seconds / base:>7.2f}"
            f"  {metrics['auc_twin_vs_unrelated']:.3f}     {metrics['top1']:.3f}"
        )


if __name__ == "__main__":
    main()
