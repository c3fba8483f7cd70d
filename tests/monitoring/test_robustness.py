"""`modelcycle robustness`: the task's shifts injected into a registered model's held-out rows."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from image_fixtures import PublishedImage, publish_image
from modelcycle.cli import app
from modelcycle.tasks.image_serving import ImageServing, shift_images
from modelcycle.tasks.twins_serving import TwinsServing, shift_pairs
from modelcycle.tracking import Tracker, TrackingSettings
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
    shifts = TwinsServing.shift_sizes
    expected = {("none", 0.0)} | {(k, s) for k, sizes in shifts.items() for s in sizes}
    assert set(points) == expected
    assert document["metric"] == "ROC-AUC twin-like vs unrelated"
    for point in points.values():
        assert 0.0 <= point["metric"] <= 1.0 and 0.0 <= point["flagged"] <= 1.0
    print({k: (round(p["metric"], 3), p["flagged"]) for k, p in points.items()})
    assert points[("none", 0.0)]["flagged"] <= 0.2, "unshifted windows should rarely drift"
    assert points[("site offset", 0.1)]["flagged"] >= 0.9, "a 10% site offset should be seen"
    assert points[("missing", 0.2)]["flagged"] >= 0.9, "a fifth of the regions missing too"
    assert "ROC-AUC" in result.output


def test_a_window_larger_than_the_rows_it_is_drawn_from_is_said(
    served_workspace: ServedWorkspace, tmp_path: Path
) -> None:
    # It was cut to the rows there are without a word: every window then held the same rows,
    # and the table read 0 % or 100 % flagged.
    uri = f"sqlite:///{served_workspace.root / 'mlflow.db'}"
    args = ["robustness", "twins@champion", f"workspace={tmp_path}", f"logger.uri={uri}"]
    result = runner.invoke(app, [*args, "--window", "100000", "--windows", "2"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    (out,) = (tmp_path / "reports").glob("robustness-twins-v1-*")
    document = json.loads((out / "robustness.json").read_text())
    pool = document["points"][0]["pool"]
    assert document["window"] == pool < 100000
    assert (
        f"note: windows of {pool} rows, all the shifted rows there are, not --window 100000" in said
    )
    assert {p["flagged"] for p in document["points"]} <= {0.0, 1.0}
    assert "rows: the shifted rows the windows are drawn from" in said  # the pool, named
    assert "held-out rows, shifted" in said and "on the version's 6 held-out rows" in said
    asked = runner.invoke(app, [*args, "--window", str(pool), "--windows", "2"])
    assert asked.exit_code == 0 and "note:" not in asked.output
    # by default windows hold half the rows when there are fewer than 100, so that they differ
    default_args = [*args[:2], f"workspace={tmp_path / 'default'}", args[3], "--windows", "2"]
    default = runner.invoke(app, default_args)
    assert default.exit_code == 0 and "note:" not in default.output, default.output
    (out,) = (tmp_path / "default" / "reports").glob("robustness-twins-v1-*")
    assert json.loads((out / "robustness.json").read_text())["window"] == min(50, pool // 2)


def test_the_report_names_the_variant_it_shifted_and_scored(
    served_workspace: ServedWorkspace, tmp_path: Path
) -> None:
    # serve.variant=int8 scored the int8 file, and nothing in the report, its plot or the
    # command's output said so: it read as the fp32 model's.
    uri = f"sqlite:///{served_workspace.root / 'mlflow.db'}"
    args = ["robustness", "twins@champion", f"logger.uri={uri}", "--window", "4", "--windows", "2"]
    for variant in ("fp32", "int8"):
        where = tmp_path / variant
        chosen = [f"serve.variant={variant}", "serve.int8_max_drop=1.0"]
        result = runner.invoke(app, [*args, f"workspace={where}", *chosen])
        assert result.exit_code == 0, result.output
        (out,) = (where / "reports").glob("robustness-twins-v1-*")
        assert json.loads((out / "robustness.json").read_text())["variant"] == variant
        assert f"of the {variant} model on the version's" in " ".join(result.output.split())


def test_robustness_runs_started_in_the_same_second_each_get_their_own_report_folder(
    served_workspace: ServedWorkspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{served_workspace.root / 'mlflow.db'}"
    args = ["robustness", "twins@champion", f"workspace={tmp_path}", f"logger.uri={uri}"]
    monkeypatch.setattr(time, "strftime", lambda fmt, *at: "20260101-120000")
    for _ in range(2):
        result = runner.invoke(app, [*args, "--window", "4", "--windows", "2"])
        assert result.exit_code == 0, result.output
    folders = sorted(p.name for p in (tmp_path / "reports").iterdir())
    assert folders == [
        "robustness-twins-v1-20260101-120000",
        "robustness-twins-v1-20260101-120000-2",
    ]
    assert all((tmp_path / "reports" / f / "robustness.json").is_file() for f in folders)


def test_an_unknown_reference_names_it(served_workspace: ServedWorkspace, tmp_path: Path) -> None:
    uri = f"sqlite:///{served_workspace.root / 'mlflow.db'}"
    result = runner.invoke(
        app, ["robustness", "nosuch@champion", f"workspace={tmp_path}", f"logger.uri={uri}"]
    )
    assert result.exit_code != 0
    assert "nosuch" in result.output


def test_image_robustness_flags_darkened_and_blurred_windows(tmp_path: Path) -> None:
    published: PublishedImage = publish_image(
        tmp_path, Tracker(TrackingSettings(), tmp_path / "ws")
    )
    uri = f"sqlite:///{published.root / 'mlflow.db'}"
    args = ["robustness", "image@champion", f"workspace={published.root}", f"logger.uri={uri}"]
    result = runner.invoke(app, [*args, "--window", "20", "--windows", "10"])
    assert result.exit_code == 0, result.output
    assert "top-1 accuracy" in result.output

    (out,) = (published.root / "reports").glob("robustness-image-v1-*")
    document = json.loads((out / "robustness.json").read_text())
    points = {(p["shift"], p["size"]): p for p in document["points"]}
    expected = {(k, s) for k, sizes in ImageServing.shift_sizes.items() for s in sizes}
    assert set(points) == {("none", 0.0)} | expected
    print({k: (round(p["metric"], 3), p["flagged"]) for k, p in points.items()})
    assert points[("none", 0.0)]["flagged"] <= 0.2, "unshifted windows should rarely drift"
    assert points[("darken", 0.4)]["flagged"] >= 0.9, "a 40% darker window should be seen"
    assert points[("blur", 2.0)]["flagged"] >= 0.9, "a blur of sigma 2 px should be seen"
    assert all(0.0 <= p["metric"] <= 1.0 for p in points.values())


def test_twins_only_models_refuse_unknown_shifts() -> None:
    info = {"features": ["lh_thickness_a", "Volume_b"]}
    with pytest.raises(ValueError, match="unknown shift 'blur'; choose from site offset"):
        TwinsServing(info).shift([np.zeros((1, 2))] * 4, "blur", 0.1, seed=0)
    with pytest.raises(ValueError, match="unknown shift 'noise'; choose from darken, blur"):
        ImageServing({"classes": ["a"], "image_size": 8}).shift([], "noise", 0.1, seed=0)


def test_image_shifts_darken_and_blur_but_keep_uint8() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    dark = shift_images(pixels, "darken", 0.5)
    assert dark.dtype == np.uint8 and dark.shape == pixels.shape
    np.testing.assert_allclose(dark, np.rint(pixels * 0.5), atol=1)
    blurred = shift_images(pixels, "blur", 1.0)
    assert blurred.dtype == np.uint8
    assert (
        np.abs(np.diff(blurred.astype(float), axis=1)).mean()
        < 0.6 * np.abs(np.diff(pixels.astype(float), axis=1)).mean()
    )
    # the channels are not mixed: a pure-red image stays pure red
    red = np.zeros((1, 8, 8, 3), np.uint8)
    red[..., 0] = 200
    assert shift_images(red, "blur", 2.0)[..., 1:].max() == 0


def test_shifts_change_only_the_measures() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(10, 1, (6, 4)).astype(np.float32), rng.normal(10, 1, (6, 4))
    cov = np.ones((6, 3), dtype=np.float32)
    sd, thick = np.ones(4), np.array([True, False, False, True])
    offset = shift_pairs([a, cov, b, cov], "site offset", 0.1, sd, thick, seed=0)
    np.testing.assert_allclose(offset[0], a * 1.1, rtol=1e-6)
    np.testing.assert_array_equal(offset[1], cov)
    thickness = shift_pairs([a, cov, b, cov], "thickness offset", 0.1, sd, thick, seed=0)
    np.testing.assert_array_equal(thickness[0][:, 1:3], a[:, 1:3])
    missing = shift_pairs([a, cov, b, cov], "missing", 0.5, sd, thick, seed=0)
    assert 0 < np.isnan(missing[2]).mean() < 1
    adapter = TwinsServing({"features": ["lh_thickness_a", "x", "y", "rh_Thickness_b"]})
    via_adapter = adapter.shift([a, cov, b, cov], "thickness offset", 0.1, seed=0)
    np.testing.assert_allclose(via_adapter[0], thickness[0], rtol=1e-6)


def _plotted(rows: list[dict[str, Any]], path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The robustness plot of `rows` as a matplotlib figure (it is also saved to `path`)."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from modelcycle.monitoring.robustness import plot_robustness

    figures: list[Any] = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_robustness(pd.DataFrame(rows), path, "t", "accuracy")
    monkeypatch.undo()
    (figure,) = figures
    return figure


def test_the_plot_steps_through_each_kind_s_sizes_named_in_the_legend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Sizes of different kinds are in different units (a share of brightness, a sigma in
    # pixels): on one size axis a blur's 2 px stood beside darkening's 0.4.
    import matplotlib.pyplot as plt

    rows = [{"shift": "none", "size": 0.0, "flagged": 0.0, "metric": 0.9}]
    for kind, sizes in (("darken", (0.4, 0.1, 0.2)), ("blur", (0.5, 1.0, 2.0))):
        rows += [{"shift": kind, "size": s, "flagged": s / 2, "metric": 0.9 - s / 4} for s in sizes]
    figure = _plotted(rows, tmp_path / "r.png", monkeypatch)
    for ax in figure.axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["none", "1", "2", "3"]
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "darken (0.1, 0.2, 0.4)" in legend and "blur (0.5, 1, 2)" in legend
        darken = next(line for line in ax.get_lines() if line.get_label().startswith("darken"))
        assert list(np.round(darken.get_xdata())) == [0, 1, 2, 3]  # steps, sizes in order
    plt.close(figure)
    assert (tmp_path / "r.png").stat().st_size > 5000


def test_kinds_that_read_alike_stay_visible_in_the_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Three kinds all flagged 100 %: drawn alike on the same points, only the last showed.
    import matplotlib.pyplot as plt

    rows = [{"shift": "none", "size": 0.0, "flagged": 0.0, "metric": 0.9}]
    for kind in ("site", "thickness", "missing"):
        rows += [{"shift": kind, "size": s, "flagged": 1.0, "metric": 0.8} for s in (0.1, 0.2)]
    figure = _plotted(rows, tmp_path / "r.png", monkeypatch)
    for ax in figure.axes:
        lines = [line for line in ax.get_lines() if not line.get_label().startswith("alpha")]
        assert len(lines) == 3
        assert len({(line.get_marker(), line.get_linestyle()) for line in lines}) == 3
        assert len({tuple(line.get_xdata()) for line in lines}) == 3  # side by side
    plt.close(figure)
