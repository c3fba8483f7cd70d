"""One sweep worker on a cheap objective, for tests of workers sharing a study.

Usage: python sweep_worker.py STORAGE_URL WORKSPACE TRIALS
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from modelcycle.search_space import parse_space
from modelcycle.sweep import StudySettings, SweepResult, run_sweep
from modelcycle.tracking import Tracker, TrackingSettings

SPACE = {"x": {"type": "float", "low": 0.0, "high": 1.0}}


def peak_at_03(overrides: list[str], report: Callable[[int, float], None]) -> float:
    """Highest at x = 0.3; slow enough that two workers overlap."""
    time.sleep(1.0)
    x = float(overrides[0].split("=", 1)[1])
    return -((x - 0.3) ** 2)


def work(storage: str, workspace: Path, trials: int) -> SweepResult:
    workspace.mkdir(parents=True, exist_ok=True)
    return run_sweep(
        StudySettings("shared", storage, trials, seed=0),
        parse_space(SPACE),
        peak_at_03,
        Tracker(TrackingSettings(), workspace),
        "score",
        workspace / f"report-{os.getpid()}",
    )


if __name__ == "__main__":
    result = work(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))
    print(f"ran {result.ran}")
