"""What a tiny two-fold twins train leaves in the workspace's MLflow store."""

from __future__ import annotations

from pathlib import Path

import mlflow


def one_run_tree(workspace: Path) -> list[mlflow.entities.Run]:
    """The MLflow runs of the workspace, checked to be one parent with its nested runs."""
    mlflow.set_tracking_uri(f"sqlite:///{workspace / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["modelcycle"], output_format="list")
    assert sorted(r.info.run_name for r in runs) == [
        "twins",
        "twins-final",
        "twins-fold0",
        "twins-fold1",
    ]
    parent = next(r for r in runs if r.info.run_name == "twins")
    children = [r for r in runs if r is not parent]
    assert {r.data.tags.get("mlflow.parentRunId") for r in children} == {parent.info.run_id}
    return runs
