"""`modelcycle robustness`: shifts injected into the registered model's held-out pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from modelcycle.cli import app
from modelcycle.monitoring.robustness import SHIFTS, shifted
from serving_fixtures import ServedWorkspace

runner = CliRunner()


def test_robustness_writes_auc_and_detection_per_shift_size(
    served_workspace: ServedWorkspace, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    uri = f"sqlite:///{served_workspace.root / 'mlflow.db'}"
    args = ["robustness", "twins@champion", f"workspace={workspace}", f"logger.uri={uri}"]
    result = runner.invoke(app, [*args, "--window", "20", "--windows", "10"])
    assert result.exit_code == 0, result.output

    (out,) = (workspace / "reports").glob("robustness-twins-v1-*")
    assert (out / "robustness.png").stat().st_size > 10_000
    document = json.loads((out / "robustness.json").read_text())
    points = {(p["shift"], p["size"]): p for p in document["points"]}
    expected = {("none", 0.0)} | {(k, s) for k, sizes in SHIFTS.items() for s in sizes}
    assert set(points) == expected
    for point in points.values():
        assert 0.0 <= point["auc"] <= 1.0 and 0.0 <= point["flagged"] <= 1.0
    print({k: (round(p["auc"], 3), p["flagged"]) for k, p in points.items()})
    assert points[("none", 0.0)]["flagged"] <= 0.2, "unshifted windows should rarely drift"
    assert points[("site offset", 0.1)]["flagged"] >= 0.9, "a 10% site offset should be seen"
    assert points[("missing", 0.2)]["flagged"] >= 0.9, "a fifth of the regions missing too"
    assert "ROC-AUC" in result.output


def test_an_unknown_reference_names_it(served_workspace: ServedWorkspace, tmp_path: Path) -> None:
    uri = f"sqlite:///{served_workspace.root / 'mlflow.db'}"
    result = runner.invoke(
        app, ["robustness", "nosuch@champion", f"workspace={tmp_path}", f"logger.uri={uri}"]
    )
    assert result.exit_code != 0
    assert "nosuch" in result.output


def test_shifts_change_only_the_measures() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(10, 1, (6, 4)).astype(np.float32), rng.normal(10, 1, (6, 4))
    cov = np.ones((6, 3), dtype=np.float32)
    sd, thick = np.ones(4), np.array([True, False, False, True])
    offset = shifted([a, cov, b, cov], "site offset", 0.1, sd, thick, seed=0)
    np.testing.assert_allclose(offset[0], a * 1.1, rtol=1e-6)
    np.testing.assert_array_equal(offset[1], cov)
    thickness = shifted([a, cov, b, cov], "thickness offset", 0.1, sd, thick, seed=0)
    np.testing.assert_array_equal(thickness[0][:, 1:3], a[:, 1:3])
    missing = shifted([a, cov, b, cov], "missing", 0.5, sd, thick, seed=0)
    assert 0 < np.isnan(missing[2]).mean() < 1
    with pytest.raises(ValueError, match="unknown shift 'blur'"):
        shifted([a, cov, b, cov], "blur", 0.1, sd, thick, seed=0)
