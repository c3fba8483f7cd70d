"""`dvc repro` of dvc.yaml on a fresh clone: every stage runs, then nothing reruns, params
changes rerun what they touch, and the outputs go to the local default remote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DVC_FILES = ("dvc.yaml", "params.yaml", ".dvc/config", ".dvcignore")


def run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a command with this venv's tools first on PATH; output kept for failure messages."""
    env = {k: v for k, v in os.environ.items() if k != "MODELCYCLE_HOME"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.fixture
def clone(tmp_path: Path, real_qtim: Path) -> Path:
    """A fresh clone of this repository with a short configuration and a local QTIM mirror."""
    target = tmp_path / "clone"
    ok(run(["git", "clone", "--quiet", str(REPO), str(target)], tmp_path))
    for name in DVC_FILES:  # the working tree's DVC files (identical in a clean checkout)
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target / name)
    params = yaml.safe_load((target / "params.yaml").read_text())
    params["data"]["mirror"] = str(real_qtim)
    params["cv"]["n_folds"], params["trainer"]["max_epochs"] = 2, 2
    (target / "params.yaml").write_text(yaml.safe_dump(params))
    return target


STAGES = ("fetch", "prepare", "train", "evaluate", "export")


def ran(output: str) -> list[str]:
    """The stages a `dvc repro` ran, in order."""
    return [stage for stage in STAGES if f"Running stage '{stage}'" in output]


def test_dvc_repro_runs_the_lifecycle_then_only_what_changed(clone: Path) -> None:
    first = ok(run(["dvc", "repro"], clone))
    assert ran(first) == list(STAGES)
    assert "promoted version 1 to @champion" in first
    manifest = json.loads((clone / "data/qtim/modelcycle-fetch.json").read_text())
    assert manifest["tag"].startswith("mirror:") and "participants.tsv" in manifest["files"]
    stats = json.loads((clone / "reports/data/stats.json").read_text())
    assert stats["counts"]["subjects"] > 300 and len(stats["data_hash"]) == 64
    metrics = json.loads((clone / "reports/evaluate/metrics.json").read_text())
    assert 0.5 < metrics["model"]["auc_twin_vs_unrelated"] <= 1.0
    assert metrics["baseline"]["auc_twin_vs_unrelated"] > 0.85
    # evaluate re-scored train's fold checkpoints: the same numbers, and the run it released
    assert metrics == json.loads((clone / "reports/train/metrics.json").read_text())
    evaluated = json.loads((clone / "reports/evaluate/summary.json").read_text())
    assert evaluated["run_id"] in first
    assert list((clone / "exports/twins").glob("twins-v1/model/onnx/model.onnx"))
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)

    again = ok(run(["dvc", "repro"], clone))
    assert "Data and pipelines are up to date" in again and not ran(again)
    # forced, export releases the run it released before: that version, exported again
    forced = ok(run(["dvc", "repro", "-s", "-f", "export"], clone))
    assert ran(forced) == ["export"] and "is already twins version 1" in forced
    assert list((clone / "exports/twins").glob("twins-v1/model/onnx/model.onnx"))
    shown = json.loads(ok(run(["dvc", "metrics", "show", "--json"], clone)))
    assert "reports/evaluate/metrics.json" in json.dumps(shown)

    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["trainer"]["max_epochs"] = 3
    (clone / "params.yaml").write_text(yaml.safe_dump(params))
    changed = set(json.loads(ok(run(["dvc", "status", "--json"], clone))))
    assert changed == {"train"}
    # up to evaluate (a longer training need not pass export's gate against the champion)
    rerun = ok(run(["dvc", "repro", "evaluate"], clone))
    assert ran(rerun) == ["train", "evaluate"]

    pushed = ok(run(["dvc", "push"], clone))
    assert "pushed" in pushed
    assert any((clone / ".modelcycle/dvc-remote").rglob("*")), "the local remote is empty"
