"""Export runs the task's serving adapter on its own examples, as the server will.

An adapter whose `decode` gave float64, dropped the batch axis or gave another number of
arrays than the model takes was exported, registered and only failed when a server started.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from example_task import load_example, publish_example
from modelcycle import export
from modelcycle.cli import app
from modelcycle.export import export_version
from modelcycle.registry import Registry
from modelcycle.serving.adapter_check import AdapterError, check_adapter
from modelcycle.serving.loading import ModelLoadError, load_served, warm_up
from modelcycle.tracking import Tracker, TrackingSettings

Decode = Callable[[Any, BaseModel], list[np.ndarray]]


def _float64(self: Any, request: BaseModel) -> list[np.ndarray]:
    return [np.array([request.x])]  # type: ignore[attr-defined]


def _unbatched(self: Any, request: BaseModel) -> list[np.ndarray]:
    return [np.array(request.x, dtype=np.float32)]  # type: ignore[attr-defined]


def _two_arrays(self: Any, request: BaseModel) -> list[np.ndarray]:
    row = np.array([request.x], dtype=np.float32)  # type: ignore[attr-defined]
    return [row, row]


BROKEN: list[tuple[str, Decode, str, str]] = [
    ("Float64Blobs", _float64, "as float64 of shape (1, 4)", "takes float32 of shape (batch, 4)"),
    ("UnbatchedBlobs", _unbatched, "as float32 of shape (4,)", "takes float32 of shape (batch, 4)"),
    ("TwoArrayBlobs", _two_arrays, "returned 2 arrays", "takes 1 input: x (float32 of shape"),
]


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """docs/examples/blobs_task.py, registered in a copy of the task registry."""
    return load_example(monkeypatch)


@pytest.fixture
def workspace(example: ModuleType, tmp_path: Path) -> Path:
    """A workspace holding blobs version 1: an untrained model from a pipeline-shaped run."""
    return publish_example(example, tmp_path)


def registry_of(workspace: Path) -> Registry:
    return Registry(Tracker(TrackingSettings(), workspace).uri)


def serve_with(
    monkeypatch: pytest.MonkeyPatch, example: ModuleType, name: str, decode: Decode
) -> None:
    """Make the example task's adapter a subclass `name` whose `decode` is `decode`."""
    broken = type(name, (example.BlobsServing,), {"decode": decode})
    monkeypatch.setattr(example.BlobsTask, "serving", broken)


def test_the_example_task_exports_with_its_adapter_checked(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    checked: list[int] = []

    def counted(*args: Any) -> int:
        checked.append(check_adapter(*args))
        return checked[-1]

    monkeypatch.setattr(export, "check_adapter", counted)
    registry = registry_of(workspace)
    _, report = export_version(registry, "blobs/1", tmp_path / "exports")
    # the example gives 3 requests, checked against fp32, then int8
    assert report.parity.passed and checked == [3, 3]
    registry.promote("blobs", "champion", "1", "test")
    served = load_served(registry, "blobs@champion", tmp_path / "cache", threads=1)
    warm_up(served)


@pytest.mark.parametrize(("name", "decode", "given", "taken"), BROKEN, ids=[b[0] for b in BROKEN])
def test_an_adapter_the_model_cannot_take_stops_the_export(
    workspace: Path,
    example: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    name: str,
    decode: Decode,
    given: str,
    taken: str,
) -> None:
    serve_with(monkeypatch, example, name, decode)
    registry = registry_of(workspace)
    with pytest.raises(AdapterError) as caught:
        export_version(registry, "blobs/1", tmp_path / "exports")
    message = str(caught.value)
    assert message.startswith(f"{name}.decode returned"), message
    assert given in message and taken in message, message
    # nothing a server would load: no hash tags, and a status that says why
    tags = {k: v for k, v in registry.get("blobs", "1").tags.items() if k.startswith("export.")}
    assert tags == {"export.status": f"failed: AdapterError: {message}"[: len("failed: ") + 300]}
    registry.promote("blobs", "champion", "1", "test")
    with pytest.raises(ModelLoadError, match=r"its last export failed \(AdapterError: "):
        load_served(registry, "blobs@champion", tmp_path / "cache", threads=1)


def test_the_refusal_says_how_to_fix_it(
    workspace: Path, example: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    serve_with(monkeypatch, example, "Float64Blobs", _float64)
    with pytest.raises(AdapterError) as caught:
        export_version(registry_of(workspace), "blobs/1", tmp_path / "exports", attach=False)
    assert str(caught.value) == (
        "Float64Blobs.decode returned input 'x' as float64 of shape (1, 4), but the model "
        "takes float32 of shape (batch, 4). Return np.float32 arrays with a leading batch "
        "axis: np.array([values], dtype=np.float32)."
    )


def test_an_answer_json_cannot_hold_stops_the_export(
    workspace: Path, example: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def encode(self: Any, outputs: dict[str, np.ndarray], context: Any = None) -> Any:
        return {"logit": outputs["logit"][0]}  # a numpy float32, which JSON does not hold

    broken = type("NumpyAnswerBlobs", (example.BlobsServing,), {"encode": encode})
    monkeypatch.setattr(example.BlobsTask, "serving", broken)
    with pytest.raises(AdapterError, match=r"^NumpyAnswerBlobs\.encode answered what JSON"):
        export_version(registry_of(workspace), "blobs/1", tmp_path / "exports", attach=False)


def test_export_command_refuses_the_adapter_in_one_line(
    workspace: Path, example: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve_with(monkeypatch, example, "UnbatchedBlobs", _unbatched)
    result = CliRunner().invoke(app, ["export", "blobs/1", f"workspace={workspace}"])
    assert result.exit_code == 2, result.output
    assert "error: UnbatchedBlobs.decode returned input 'x'" in result.stdout
    assert "Traceback" not in result.stdout


def test_a_faulty_adapter_stops_the_export_before_int8_and_timing(
    workspace: Path, example: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    timed: list[Path] = []
    measure = export.measure_latency

    def recorded(path: Path, *args: Any, **kwargs: Any) -> Any:
        timed.append(path)
        return measure(path, *args, **kwargs)

    monkeypatch.setattr(export, "measure_latency", recorded)
    serve_with(monkeypatch, example, "Float64Blobs", _float64)
    with pytest.raises(AdapterError, match=r"^Float64Blobs\.decode returned"):
        export_version(registry_of(workspace), "blobs/1", tmp_path / "exports", attach=False)
    written = sorted(p.name for p in (tmp_path / "exports").rglob("onnx/*"))
    assert written == ["model.onnx"] and timed == []


def float64_model(path: Path, out: Path, calibration: Any = None) -> str:
    """Write to `out` a model of blobs' outputs that takes float64 rows, not float32."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["x32"], ["logit"], axes=[1], keepdims=1),
        ],
        "float64",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["batch", 4])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch", 1])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), out)
    return "dynamic"


def test_the_int8_model_is_checked_too(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(export, "quantize_int8", float64_model)
    registry = registry_of(workspace)
    with pytest.raises(AdapterError) as caught:
        export_version(registry, "blobs/1", tmp_path / "exports")
    assert str(caught.value).startswith(
        "int8 ONNX (model.int8.onnx): BlobsServing.decode returned input 'x' as float32 of "
        "shape (1, 4), but the model takes float64 of shape (batch, 4)."
    ), caught.value
    assert not list((tmp_path / "exports").rglob("export.json"))
    assert registry.get("blobs", "1").tags["export.status"].startswith("failed: AdapterError: int8")
