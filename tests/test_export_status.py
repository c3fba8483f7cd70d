"""A version whose last export failed, or has not finished, is never served.

A failed re-export left the previous export's tags (sha256, parity passed) on the version;
when the new ONNX file was byte-identical to the old one, a server loaded it anyway.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from example_task import load_example, publish_example
from modelcycle import export
from modelcycle.cli import app
from modelcycle.export import ParityError, export_version
from modelcycle.export_status import STATUS_TAG, failed, refusal
from modelcycle.registry import Registry
from modelcycle.serving.loading import ModelLoadError, load_served
from modelcycle.serving.server import alias_reloader, check_servable
from modelcycle.tracking import Tracker, TrackingSettings


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """docs/examples/blobs_plugin's task, registered in a copy of the task registry."""
    return load_example(monkeypatch)


@pytest.fixture
def registry(example: ModuleType, tmp_path: Path) -> Registry:
    """blobs versions 1 and 2, version 1 exported and @champion."""
    workspace = publish_example(example, tmp_path, versions=2)
    registry = Registry(Tracker(TrackingSettings(), workspace).uri)
    export_version(registry, "blobs/1", tmp_path / "exports")
    registry.promote("blobs", "champion", "1", "test")
    return registry


def load(registry: Registry, tmp_path: Path) -> Any:
    return load_served(registry, "blobs@champion", tmp_path / "cache", threads=1)


def far_from_torch(module: Any, inputs: Any) -> list[np.ndarray]:
    """torch's outputs, moved well beyond the parity tolerances."""
    return [out + 1.0 for out in original_run_torch(module, inputs)]


original_run_torch = export._run_torch


def test_a_failed_re_export_is_refused_until_an_export_succeeds(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = registry.get("blobs", "1").tags
    assert before[STATUS_TAG] == "ok"
    load(registry, tmp_path)
    monkeypatch.setattr(export, "_run_torch", far_from_torch)
    with pytest.raises(ParityError):
        export_version(registry, "blobs@champion", tmp_path / "exports")
    after = registry.get("blobs", "1").tags
    # the same weights give the same file: its hash alone would still let it load
    assert after["export.fp32.sha256"] == before["export.fp32.sha256"]
    with pytest.raises(ModelLoadError) as refused:
        load(registry, tmp_path)
    said = str(refused.value)
    assert "\n" not in said
    assert said.startswith("blobs version 1: its last export failed (ParityError: "), said
    assert said.endswith("re-run `modelcycle export blobs@champion`."), said
    with pytest.raises(ModelLoadError, match="its last export failed"):
        check_servable(registry, "blobs@champion", cache=tmp_path / "serve-cache")
    monkeypatch.setattr(export, "_run_torch", original_run_torch)
    export_version(registry, "blobs@champion", tmp_path / "exports")
    assert registry.get("blobs", "1").tags[STATUS_TAG] == "ok"
    assert load(registry, tmp_path).version == "1"


def test_a_re_export_removes_the_export_tags_it_no_longer_writes(
    example: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = publish_example(example, tmp_path)
    registry = Registry(Tracker(TrackingSettings(), workspace).uri)
    registry.set_tags(registry.get("blobs", "1"), {"lineage.note": "kept"})  # not an export's
    monkeypatch.setattr(export, "_held_out_metric", lambda *args: mean_output)
    export_version(registry, "blobs/1", tmp_path / "exports")
    assert "export.metric.delta" in registry.get("blobs", "1").tags
    monkeypatch.setattr(export, "_held_out_metric", lambda *args: no_metric)
    _, report = export_version(registry, "blobs/1", tmp_path / "exports")
    tags = registry.get("blobs", "1").tags
    written = {k: v for k, v in tags.items() if k.startswith("export.")}
    assert written == export.export_tags(report) | {STATUS_TAG: "ok"}
    assert not any(k.startswith("export.metric.") for k in tags)
    assert tags["lineage.note"] == "kept"


def mean_output(outputs: list[np.ndarray]) -> float:
    return float(np.mean(outputs[0]))


def no_metric(outputs: list[np.ndarray]) -> float:
    raise ValueError("no held-out labels")


def test_an_export_stopped_while_it_attaches_is_refused_and_one_stopped_before_is_not(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def stopped(*args: Any, **kwargs: Any) -> str:
        raise KeyboardInterrupt

    # stopped before any file was attached: the version is its last export, and serves (a
    # wrong --out, or a Ctrl-C while the model converted, made a served version unservable)
    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(export, "quantize_int8", stopped)
        export_version(registry, "blobs/1", tmp_path / "exports")
    assert registry.get("blobs", "1").tags[STATUS_TAG] == "ok"
    assert load(registry, tmp_path).version == "1"
    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(Registry, "log_directory", stopped)
        export_version(registry, "blobs/1", tmp_path / "exports")
    with pytest.raises(ModelLoadError) as refused:
        load(registry, tmp_path)
    assert str(refused.value) == (
        "blobs version 1: its last export failed (stopped by Ctrl-C before it finished), so "
        "it is not served; re-run `modelcycle export blobs@champion`."
    )


def test_robustness_refuses_a_failed_export_in_one_line(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "_run_torch", far_from_torch)
    with pytest.raises(ParityError):
        export_version(registry, "blobs/1", tmp_path / "exports")
    workspace = f"workspace={tmp_path / 'ws'}"
    result = CliRunner().invoke(app, ["robustness", "blobs@champion", workspace])
    said = " ".join(result.stdout.split())
    assert result.exit_code == 2, result.output
    assert said.startswith("error: blobs version 1: its last export failed (ParityError: "), said
    assert said.endswith("so it is not served; re-run `modelcycle export blobs@champion`."), said


def test_checking_only_leaves_the_version_as_it_was(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "_run_torch", far_from_torch)
    with pytest.raises(ParityError):
        export_version(registry, "blobs/1", tmp_path / "exports", attach=False)
    assert registry.get("blobs", "1").tags[STATUS_TAG] == "ok"
    load(registry, tmp_path)


def test_hot_reload_does_not_swap_to_a_version_whose_export_has_not_finished(
    registry: Registry, tmp_path: Path
) -> None:
    current = load(registry, tmp_path)
    export_version(registry, "blobs/2", tmp_path / "exports")
    v2 = registry.get("blobs", "2")
    registry.set_tags(v2, {STATUS_TAG: "running"})  # as an export that is under way
    registry.promote("blobs", "champion", "2", "test")
    reload = alias_reloader(registry, tmp_path / "cache", 1, None)
    with pytest.raises(ModelLoadError, match="version 2: its last export has not finished"):
        reload(current)  # the app logs this and keeps serving the current version
    registry.set_tags(v2, {STATUS_TAG: "ok"})
    fresh = reload(current)
    assert fresh is not None and fresh.version == "2"


def test_a_version_exported_before_the_status_tag_still_serves(
    registry: Registry, tmp_path: Path
) -> None:
    registry.client.delete_model_version_tag("blobs", "1", STATUS_TAG)
    assert STATUS_TAG not in registry.get("blobs", "1").tags
    assert load(registry, tmp_path).version == "1"


@pytest.mark.parametrize(
    ("status", "said"),
    [
        (None, None),
        ("ok", None),
        ("running", "v: its last export has not finished"),
        ("failed: ParityError: off", "v: its last export failed (ParityError: off), so it"),
        ("failed:", "v: its last export failed (no reason recorded)"),
    ],
)
def test_refusal_reads_the_status(status: str | None, said: str | None) -> None:
    tags = {} if status is None else {STATUS_TAG: status}
    got = refusal(tags, "v", "m@a")
    assert got == said if said is None else (got or "").startswith(said)


def test_a_failure_keeps_the_first_line_of_its_reason() -> None:
    assert failed(ValueError("bad value\nmore detail")) == "failed: ValueError: bad value"
    assert len(failed(ValueError("x" * 1000))) == len("failed: ") + 300
    assert failed(KeyboardInterrupt(), "SIGTERM") == "failed: stopped by SIGTERM before it finished"
