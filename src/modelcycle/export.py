"""ONNX export behind a parity gate: fp32 and int8 files with their hashes, latency and report.

The module knows nothing about any task: it takes a `torch.nn.Module`, example inputs and
held-out inputs (numpy arrays, one per model input, rows along axis 0).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from modelcycle.digests import sha256_file
from modelcycle.export_status import OK, RUNNING, STATUS_TAG, TAG_PREFIX, failed
from modelcycle.registry import Registered, Registry
from modelcycle.servable import ServableModel
from modelcycle.serving.adapter import ServingAdapter
from modelcycle.serving.adapter_check import AdapterError, check_adapter
from modelcycle.stop_signals import stopped_by
from modelcycle.tasks import get_task

if TYPE_CHECKING:
    import onnx
    import onnxruntime

logger = logging.getLogger(__name__)

_TINY = float(np.finfo(np.float32).tiny)
_WARMUP_RUNS = 3
#: Reference rows that calibrate static int8 activations: a bounded, deterministic sample.
CALIBRATION_ROWS = 64
_CALIBRATION_BATCH = 8
#: The int8 method when no static quantization is done (see `quantize_int8` for when).
DYNAMIC = "dynamic"
# Emitted by torch itself on the TorchScript exporter path, which export_onnx uses on purpose.
_LEGACY_EXPORTER_WARNINGS = (
    r"You are using the legacy TorchScript-based ONNX export",
    r"The feature will be removed",
)
_INSTANCE_NORM_WARNING = r".*operator 'instance_norm' is set to train=True"


class ParityError(RuntimeError):
    """ONNX Runtime's outputs differ from torch's beyond the tolerances."""


@dataclass(frozen=True)
class OutputDiff:
    """How far one ONNX output is from torch's.

    Attributes:
        name: Output name in the ONNX graph.
        max_abs: Largest |onnx - torch|.
        max_rel: Largest |onnx - torch| / max(|torch|, tiny).
        passed: Whether |onnx - torch| <= atol + rtol·|torch| everywhere.
    """

    name: str
    max_abs: float
    max_rel: float
    passed: bool


@dataclass(frozen=True)
class Parity:
    """Agreement of the ONNX model with torch on held-out inputs, over all outputs.

    Attributes:
        max_abs: Largest |onnx - torch| over every output.
        max_rel: Largest |onnx - torch| / max(|torch|, tiny) over every output.
        rtol: Relative tolerance used.
        atol: Absolute tolerance used.
        n_rows: Number of held-out rows compared.
        passed: Whether every output is within the tolerances (np.allclose semantics).
        outputs: The same comparison, output by output.
    """

    max_abs: float
    max_rel: float
    rtol: float
    atol: float
    n_rows: int
    passed: bool
    outputs: tuple[OutputDiff, ...] = ()

    @property
    def failed(self) -> list[str]:
        """Names of the outputs outside the tolerances."""
        return [out.name for out in self.outputs if not out.passed]


@dataclass(frozen=True)
class Variant:
    """One exported model file and its measured speed.

    Attributes:
        name: "fp32" or "int8".
        path: The .onnx file.
        sha256: Hex SHA-256 of the file.
        size_bytes: File size.
        latency_ms: Batch size → median milliseconds per call (ONNX Runtime, warm).
        rows_per_second: Batch size → rows scored per second at that median.
    """

    name: str
    path: Path
    sha256: str
    size_bytes: int
    latency_ms: dict[int, float]
    rows_per_second: dict[int, float]


@dataclass(frozen=True)
class ExportReport:
    """What `export_model` wrote and measured.

    Attributes:
        variants: The fp32 model, then its int8 quantization.
        parity: fp32 ONNX against torch on the held-out inputs.
        int8_max_abs_diff: Largest |fp32 - int8| on the held-out inputs, first output.
        metric: {"fp32": m, "int8": m, "delta": int8 - fp32, "rows": held-out rows} when a
            metric was given, else {}.
        int8_method: How the int8 model was quantized, e.g. "static-qdq (64 reference rows)".
        metric_name: What `metric` measures ("" without one).
    """

    variants: list[Variant]
    parity: Parity
    int8_max_abs_diff: float
    metric: dict[str, float] = field(default_factory=dict)
    int8_method: str = DYNAMIC
    metric_name: str = ""

    def table(self) -> str:
        """Markdown table: variant, size, short hash, latency and rows/s per batch size."""
        sizes = sorted({b for v in self.variants for b in v.latency_ms})
        header = ["variant", "size", "sha256", *(f"ms @ batch {b}" for b in sizes)]
        header += [f"rows/s @ batch {b}" for b in sizes]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for v in self.variants:
            cells = [v.name, _human_size(v.size_bytes), f"`{v.sha256[:12]}`"]
            cells += [_cell(v.latency_ms.get(b), ".3f") for b in sizes]
            cells += [_cell(v.rows_per_second.get(b), ",.0f") for b in sizes]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (str keys, paths as str, non-finite floats as None)."""
        data = asdict(self)
        data["parity"]["failed"] = self.parity.failed
        for variant in data["variants"]:
            variant["path"] = str(variant["path"])
        return _jsonable(data)


def _cell(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _human_size(n_bytes: int) -> str:
    size = float(n_bytes)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def export_onnx(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    path: Path,
    opset: int = 17,
) -> Path:
    """Export `module` to one self-contained ONNX file with a dynamic batch axis, then check it.

    Uses torch's TorchScript exporter (`dynamo=False`): it writes exactly the requested
    opset, while the dynamo exporter has no opset-17 implementations and its down-conversion
    from 18 fails on the ReduceL2 that F.normalize becomes (the file silently stays at 18).

    Args:
        module: The model; it is put in eval mode.
        example: One example tensor per model input; any batch size.
        input_names: ONNX names of the inputs, in `forward` order.
        output_names: ONNX names of the outputs, in the order `forward` returns them.
        path: Where to write the .onnx file (parents are created).
        opset: ONNX opset version.

    Returns:
        `path`, after `onnx.checker.check_model(path, full_check=True)` passed.

    Raises:
        ValueError: If the number of input names does not match the example.
    """
    import onnx

    if len(input_names) != len(example):
        raise ValueError(
            f"input_names={list(input_names)} has {len(input_names)} names but the example has "
            f"{len(example)} tensors; give one name per forward() argument."
        )
    # the module is the served wrapper (inputs and outputs as requests carry them), not the
    # task's network: say what goes in and out rather than the wrapper's class
    logger.info(
        "Exporting to %s (opset %d): %s in, %s out",
        path,
        opset,
        ", ".join(input_names),
        ", ".join(output_names),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    batch_axis = {name: {0: "batch"} for name in [*input_names, *output_names]}
    with warnings.catch_warnings():
        for message in _LEGACY_EXPORTER_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
        # Instance norm without running statistics (MONAI's U-Nets) normalises by the input's
        # own statistics in eval mode too, which is what the exporter writes; the warning that
        # it exports "train=True" is about running statistics such a layer does not keep.
        warnings.filterwarnings("ignore", message=_INSTANCE_NORM_WARNING, category=UserWarning)
        torch.onnx.export(
            module,
            tuple(example),
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=batch_axis,
            opset_version=opset,
            dynamo=False,
        )
    _inline_shared_weights(path)
    onnx.checker.check_model(str(path), full_check=True)
    return path


def _inline_shared_weights(path: Path) -> None:
    """Give every weight that the exporter shares through an Identity node its own copy.

    The exporter stores equal weights once and feeds the other users through Identity nodes
    (ResNet-18's downsampling convolutions, for one); ONNX Runtime's quantizer then refuses
    those convolutions ("Expected ... to be an initializer"). Copies make them plain
    initializers again.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    weights = {w.name: w for w in graph.initializer}
    shared = [n for n in graph.node if n.op_type == "Identity" and n.input[0] in weights]
    if not shared:
        return
    for node in shared:
        copy = onnx.TensorProto()
        copy.CopyFrom(weights[node.input[0]])
        copy.name = node.output[0]
        graph.initializer.append(copy)
        graph.node.remove(node)
    logger.info("%s: %d shared weights copied out of Identity nodes", path.name, len(shared))
    onnx.save(model, str(path))


def _session(path: Path) -> onnxruntime.InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = min(2, os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run_onnx(session: onnxruntime.InferenceSession, inputs: Sequence[np.ndarray]) -> list[Any]:
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise ValueError(
            f"The ONNX model takes {len(names)} inputs {names} but {len(inputs)} arrays were "
            "given; pass one array per model input, in the same order."
        )
    return list(session.run(None, dict(zip(names, inputs, strict=True))))


def _run_torch(module: torch.nn.Module, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    module.eval()
    with torch.no_grad():
        out = module(*(torch.from_numpy(np.ascontiguousarray(x)) for x in inputs))
    outputs = out if isinstance(out, tuple | list) else (out,)
    return [t.detach().cpu().numpy() for t in outputs]


def _abs_diff(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """|got - want| in float64, 0 where both agree (equal infinities, NaN on both sides)."""
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    agree = (got64 == want64) | (np.isnan(got64) & np.isnan(want64))
    with np.errstate(invalid="ignore"):
        diff = np.abs(got64 - want64)
    return np.where(agree, 0.0, np.nan_to_num(diff, nan=np.inf))


def _compare(name: str, got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> OutputDiff:
    if got.shape != want.shape:
        raise ParityError(
            f"ONNX output {name!r} has shape {got.shape} but torch returns {want.shape}; "
            "re-export the module with the same output order and dynamic batch axis."
        )
    diff = _abs_diff(got, want)
    rel = diff / np.maximum(np.abs(want.astype(np.float64)), _TINY)
    return OutputDiff(
        name=name,
        max_abs=float(np.max(diff, initial=0.0)),
        max_rel=float(np.nanmax(rel, initial=0.0)),
        passed=bool(np.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)),
    )


def check_parity(
    module: torch.nn.Module,
    path: Path,
    inputs: Sequence[np.ndarray],
    rtol: float = 1e-3,
    atol: float = 1e-5,
) -> Parity:
    """Compare every output of torch and ONNX Runtime on the same held-out inputs.

    Args:
        module: The torch model (run in eval mode, without gradients).
        path: Its ONNX export.
        inputs: One array per model input, rows along axis 0.
        rtol: Relative tolerance: |onnx - torch| <= atol + rtol·|torch| must hold everywhere.
        atol: Absolute tolerance.

    Returns:
        The largest absolute and relative errors, overall and output by output.

    Raises:
        ValueError: If the inputs do not match the model's inputs.
        ParityError: If an ONNX output's shape differs from torch's.
    """
    logger.info("Checking parity of %s on %d held-out rows", path, _n_rows(inputs))
    session = _session(path)
    got = _run_onnx(session, inputs)
    want = _run_torch(module, inputs)
    names = [o.name for o in session.get_outputs()]
    if len(want) != len(got):
        raise ParityError(
            f"The ONNX model has {len(got)} outputs {names} but the module returns {len(want)}; "
            "export the same module that is checked."
        )
    diffs = tuple(_compare(n, g, w, rtol, atol) for n, g, w in zip(names, got, want, strict=True))
    return Parity(
        max_abs=max(d.max_abs for d in diffs),
        max_rel=max(d.max_rel for d in diffs),
        rtol=rtol,
        atol=atol,
        n_rows=_n_rows(inputs),
        passed=all(d.passed for d in diffs),
        outputs=diffs,
    )


def _n_rows(inputs: Sequence[np.ndarray]) -> int:
    if not inputs or len(inputs[0]) == 0:
        raise ValueError("No held-out rows: pass one non-empty array per model input.")
    return len(inputs[0])


def _parity_error(parity: Parity, path: Path) -> ParityError:
    """The error to raise for a failed parity check, naming each failing output."""
    details = "; ".join(
        f"output {d.name!r}: max abs error {d.max_abs:.3g}, max rel error {d.max_rel:.3g}"
        for d in parity.outputs
        if not d.passed
    )
    return ParityError(
        f"{path} disagrees with torch on {parity.n_rows} held-out rows — {details} — beyond "
        f"|onnx - torch| <= atol + rtol·|torch| with atol={parity.atol:g}, rtol={parity.rtol:g}. "
        "Export the module again from the same weights, or loosen rtol/atol if the gap is "
        "expected float noise."
    )


def quantize_int8(path: Path, out: Path, calibration: Sequence[np.ndarray] | None = None) -> str:
    """Quantize `path` to int8 in `out` by whichever method makes it faster.

    A graph with convolutions is quantized statically (QDQ: int8 weights per channel, uint8
    activations whose ranges come from `calibration`); ONNX Runtime's dynamic ConvInteger is
    slower than fp32. ResNet-18 at 224 px, 2 threads (AVX512-VNNI): fp32 17.5 ms, dynamic
    73 ms, static QDQ 5.9 ms per image. Any other graph is quantized dynamically: on the
    twins models static QDQ only adds Quantize/Dequantize steps (ms at batch 1 / 32, real
    QTIM, 2 threads: MLP fp32 0.036 / 0.137, dynamic 0.043 / 0.143, static 0.052 / 0.171;
    dense GNN fp32 0.125 / 1.57, dynamic 0.127 / 1.39, static 0.217 / 3.90).

    Args:
        path: The fp32 ONNX model.
        out: Where to write the int8 model (parents are created).
        calibration: One array per model input, rows along axis 0, like the training data
            (not the held-out rows the int8 model is scored on); at most `CALIBRATION_ROWS`
            evenly spaced rows are used. Without it, every graph is quantized dynamically.

    Returns:
        The method used: "static-qdq (N reference rows)", "dynamic", or "dynamic (...)" with
        the reason static quantization was not possible (no calibration rows, or the
        quantizer refused the graph: the fp32 export stands either way).
    """
    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    graph = onnx.load(str(path)).graph  # read once: the ops decide, the inputs feed calibration
    if not any(node.op_type == "Conv" for node in graph.node):
        return _quantize_dynamic(path, out, DYNAMIC)
    if calibration is None or len(calibration[0]) == 0:
        return _quantize_dynamic(path, out, f"{DYNAMIC} (no reference sample to calibrate)")
    rows = _calibration_rows(calibration, CALIBRATION_ROWS)
    try:
        _quantize_static(path, out, _Calibration(_input_names(graph), rows))
    except Exception as err:  # a graph the quantizer cannot take must not fail the fp32 export
        why = f"{type(err).__name__}: {err}".splitlines()[0][:200]
        logger.warning("Static int8 of %s failed (%s); quantizing dynamically instead", path, why)
        return _quantize_dynamic(path, out, f"{DYNAMIC} (static quantization failed: {why})")
    return f"static-qdq ({len(rows[0])} reference rows)"


def _calibration_rows(arrays: Sequence[np.ndarray], limit: int) -> list[np.ndarray]:
    """At most `limit` evenly spaced rows of each array: the same rows on every export."""
    n_rows = len(arrays[0])
    picks = np.unique(np.linspace(0, n_rows - 1, min(limit, n_rows)).round().astype(int))
    return [np.ascontiguousarray(a[picks]) for a in arrays]


def _quantize_dynamic(path: Path, out: Path, method: str) -> str:
    """int8 weights, activations quantized at run time; returns `method`.

    Pre-processing (`quant_pre_process`) is skipped: it costs seconds and changes nothing for
    MatMul/Gemm models (onnxruntime's warning suggesting it is filtered out).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logger.info("Quantizing %s to int8 weights in %s (%s)", path, out, method)
    with _quiet_quantizer():
        quantize_dynamic(path, out, weight_type=QuantType.QInt8)
    return method


def _quantize_static(path: Path, out: Path, calibration: _Calibration) -> None:
    """QDQ int8: weights per channel, activation ranges (min/max) from `calibration`."""
    import tempfile

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    logger.info("Quantizing %s statically (QDQ) on %d rows in %s", path, calibration.rows, out)
    with tempfile.TemporaryDirectory() as tmp, _quiet_quantizer():
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(path), str(prepared))  # shape inference + fusions
        quantize_static(
            prepared,
            out,
            calibration,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )


def _input_names(graph: onnx.GraphProto) -> list[str]:
    weights = {w.name for w in graph.initializer}
    return [i.name for i in graph.input if i.name not in weights]


class _Calibration:
    """Feeds calibration rows to onnxruntime's quantizer in small batches."""

    def __init__(self, names: list[str], rows: list[np.ndarray]) -> None:
        self.rows = len(rows[0])
        starts = range(0, self.rows, _CALIBRATION_BATCH)
        self._feeds = iter(
            [
                {n: a[s : s + _CALIBRATION_BATCH] for n, a in zip(names, rows, strict=True)}
                for s in starts
            ]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Quiet the quantizer's root-logger lines: INFO per unquantized tensor, and its advice.

    The advice (a WARNING to run pre-processing first) comes with every dynamic export,
    where pre-processing is skipped on purpose (see `_quantize_dynamic`).
    """
    root = logging.getLogger()
    advice = _NoPreprocessingAdvice()
    logging.disable(logging.INFO)
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)
        logging.disable(logging.NOTSET)


class _NoPreprocessingAdvice(logging.Filter):
    """Drops the quantizer's advice to pre-process, and its per-tensor notes on 1-D weights.

    The note comes as one WARNING per norm layer: its 1-D scale has no channel axis, so it is
    quantized per tensor, the only way it can be.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            message.startswith("Please consider to run pre-processing")
            or (message.startswith("Axis ") and "is out-of-range for weight" in message)
        )


def _take_rows(array: np.ndarray, n: int) -> np.ndarray:
    """The first `n` rows of `array`, cycling through it when it has fewer."""
    return array[np.arange(n) % len(array)]


def _median_ms(
    session: onnxruntime.InferenceSession, batch: Sequence[np.ndarray], repeats: int
) -> float:
    for _ in range(_WARMUP_RUNS):
        _run_onnx(session, batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _run_onnx(session, batch)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure_latency(
    path: Path,
    inputs: Sequence[np.ndarray],
    batch_sizes: Sequence[int] = (1, 32),
    repeats: int = 30,
) -> tuple[dict[int, float], dict[int, float]]:
    """Median warm latency of one ONNX Runtime call per batch size, on min(2, CPUs) threads.

    Args:
        path: The ONNX model.
        inputs: One array per model input; batches take (and repeat) their rows.
        batch_sizes: Batch sizes to time.
        repeats: Timed calls per batch size, after a few warm-up calls.

    Returns:
        (batch size → median ms per call, batch size → rows per second).

    Raises:
        ValueError: If a batch size or `repeats` is below 1, or there are no rows.
    """
    if repeats < 1 or any(b < 1 for b in batch_sizes):
        raise ValueError(
            f"batch_sizes={list(batch_sizes)}, repeats={repeats}: all must be at least 1."
        )
    _n_rows(inputs)
    logger.info("Timing %s at batch sizes %s (%d calls each)", path, list(batch_sizes), repeats)
    session = _session(path)
    latency: dict[int, float] = {}
    for size in batch_sizes:
        latency[size] = _median_ms(session, [_take_rows(x, size) for x in inputs], repeats)
    throughput = {size: size / (ms / 1000) for size, ms in latency.items()}
    return latency, throughput


def _variant(
    name: str, path: Path, inputs: Sequence[np.ndarray], batch_sizes: Sequence[int], repeats: int
) -> Variant:
    latency, throughput = measure_latency(path, inputs, batch_sizes, repeats)
    return Variant(name, path, sha256_file(path), path.stat().st_size, latency, throughput)


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(_abs_diff(a, b), initial=0.0))


def _metric_delta(
    metric: Callable[[list[np.ndarray]], float] | None,
    fp32: list[np.ndarray],
    int8: list[np.ndarray],
) -> dict[str, float]:
    if metric is None:
        return {}
    try:
        m32, m8 = float(metric(fp32)), float(metric(int8))
    except ValueError as err:  # e.g. a model saved without held-out labels
        logger.warning("No int8 metric delta: %s", err)
        return {}
    return {"fp32": m32, "int8": m8, "delta": m8 - m32, "rows": float(len(fp32[0]))}


def _write_report(report: ExportReport, out_dir: Path) -> None:
    (out_dir / "export.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    parity = report.parity
    summary = [
        f"fp32 parity with torch on {parity.n_rows} rows: "
        f"{'passed' if parity.passed else 'FAILED'} (max abs {parity.max_abs:.3g}, "
        f"max rel {parity.max_rel:.3g}; rtol={parity.rtol:g}, atol={parity.atol:g})",
        f"int8 quantization: {report.int8_method}",
        f"int8 max |fp32 - int8| (first output): {report.int8_max_abs_diff:.3g}",
    ]
    if report.metric:
        values = ", ".join(f"{k} {v:.4g}" for k, v in report.metric.items())
        summary.append(
            f"held-out {report.metric_name or 'metric'}: {values} (the final fit's validation "
            "rows, which chose its checkpoint: read the difference; the cross-validated folds "
            "give the level)"
        )
    text = report.table() + "\n" + "\n".join(f"- {line}" for line in summary) + "\n"
    (out_dir / "export.md").write_text(text)
    logger.info("Wrote %s and %s", out_dir / "export.json", out_dir / "export.md")


def export_model(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    out_dir: Path,
    held_out: Sequence[np.ndarray],
    rtol: float = 1e-3,
    atol: float = 1e-5,
    metric: Callable[[list[np.ndarray]], float] | None = None,
    *,
    metric_name: str = "",
    calibration: Sequence[np.ndarray] | None = None,
    batch_sizes: Sequence[int] = (1, 32),
    repeats: int = 30,
    check: Callable[[str, Path], None] | None = None,
) -> ExportReport:
    """Export fp32 and int8 ONNX models, check fp32 against torch, time both, write a report.

    Writes out_dir/model.onnx, model.int8.onnx, export.json and export.md. Only the fp32 model
    is gated by parity; the int8 one is reported with its method, output difference and
    metric delta. `check` sees each file as soon as it is written, so what it refuses stops
    the export before anything more is written or timed.

    Args:
        module: The model.
        example: One example tensor per model input, for tracing.
        input_names: ONNX input names, in `forward` order.
        output_names: ONNX output names, in the order `forward` returns them.
        out_dir: Directory for the files (created).
        held_out: One array per model input (rows along axis 0), unseen in training.
        rtol: Parity relative tolerance.
        atol: Parity absolute tolerance.
        metric: Optional score of a model's ONNX outputs on `held_out`, e.g. ROC-AUC; a
            ValueError from it means no delta is reported.
        metric_name: What `metric` measures, for the report.
        calibration: Rows like the training data (one array per input) that calibrate static
            int8 quantization; see `quantize_int8`.
        batch_sizes: Batch sizes to time.
        repeats: Timed calls per batch size.
        check: Called with a variant's name ("fp32", "int8") and file: fp32 right after its
            parity check, int8 right after quantization; an error it raises stops the export.

    Returns:
        The report also written to export.json.

    Raises:
        ParityError: If fp32 parity fails; the files and report are written first.
    """
    fp32_path = export_onnx(module, example, input_names, output_names, out_dir / "model.onnx")
    parity = check_parity(module, fp32_path, held_out, rtol=rtol, atol=atol)
    if check is not None:
        check("fp32", fp32_path)
    int8_path = out_dir / "model.int8.onnx"
    int8_method = quantize_int8(fp32_path, int8_path, calibration)
    if check is not None:
        check("int8", int8_path)
    fp32_out = _run_onnx(_session(fp32_path), held_out)
    int8_out = _run_onnx(_session(int8_path), held_out)
    delta = _metric_delta(metric, fp32_out, int8_out)
    report = ExportReport(
        variants=[
            _variant("fp32", fp32_path, held_out, batch_sizes, repeats),
            _variant("int8", int8_path, held_out, batch_sizes, repeats),
        ],
        parity=parity,
        int8_max_abs_diff=_max_abs_diff(fp32_out[0], int8_out[0]),
        metric=delta,
        int8_method=int8_method,
        metric_name=metric_name if delta else "",
    )
    _write_report(report, out_dir)
    if not parity.passed:
        raise _parity_error(parity, fp32_path)
    return report


def export_version(
    registry: Registry, reference: str, out_root: Path, attach: bool = True
) -> tuple[Registered, ExportReport]:
    """Export a registered version (`NAME@ALIAS`) and attach the results to it.

    With `attach` false the export is only checked (parity, int8 delta, latency on this
    machine) and nothing is written to the registry: a CI job checking a moved version must
    not replace its files and its latency tags with the CI machine's.

    The ONNX files, export.json and export.md go to the version's run under `model/onnx/`;
    the version gets tags with each file's sha256 (serving loads only hash-matching ONNX),
    the parity errors, the int8 method and the int8 delta on the task's held-out metric.
    Static int8 is calibrated on the version's reference sample, never on the held-out rows
    that score the delta. The task's serving adapter runs on a few of its own example
    requests against each ONNX file as soon as it is written, as a server will
    (`check_adapter`).

    The version's `export.status` tag is "running" once files start to be attached, and
    "ok" once every other tag is set and the `export.*` tags of an earlier export that this
    one did not write are removed; an export that stops after that (a failed check, Ctrl-C,
    SIGTERM) sets it to "failed: why", and serving refuses the version until an export
    succeeds: the tags and files of an earlier export may still be on it. One that stops
    before attaching anything leaves the version as its last export left it.

    Raises:
        ParityError: If fp32 parity fails.
        AdapterError: If the adapter's requests do not become what the model takes, or its
            answers are not JSON. Either way the files written so far are attached.
    """
    version = registry.resolve(reference)
    attaching: list[bool] = []  # set once this export starts changing the version's files
    try:
        report = _export_files(registry, version, out_root, attach, attaching)
    except BaseException as err:  # Ctrl-C and SIGTERM too: the version must say it stopped
        if attaching:  # before, the version's files and tags were still the last export's
            registry.set_tags(version, {STATUS_TAG: failed(err, stopped_by())})
        raise
    return version, report


def _export_files(
    registry: Registry,
    version: Registered,
    out_root: Path,
    attach: bool,
    attaching: list[bool],
) -> ExportReport:
    """Export `version` into a copy of it under `out_root`; with `attach`, attach the results.

    Before the first file is attached the status tag becomes "running" (and `attaching`
    says so); "ok" is the last tag written, after the earlier export's stale tags are
    removed.
    """
    local = registry.download(version, out_root / f"{version.name}-v{version.version}")
    servable = ServableModel.load(local)
    adapter = get_task(servable.task).serving(servable.info)
    out_dir = local / "onnx"
    try:
        report = export_model(
            servable.module,
            servable.example(),
            servable.input_names,
            servable.output_names,
            out_dir,
            servable.held_out,
            metric=_held_out_metric(adapter, servable.output_names, servable.target),
            metric_name=adapter.held_out_metric_name,
            calibration=servable.reference,
            check=functools.partial(_check_variant, adapter, servable),
        )
    except Exception:  # a failed check is kept beside the version too
        if attach:  # (not a stop: half-made files would replace the version's good ones)
            _attach(registry, version, out_dir, attaching)
        raise
    if attach:
        _attach(registry, version, out_dir, attaching)
        _replace_export_tags(registry, version, export_tags(report))
    return report


def _attach(registry: Registry, version: Registered, out_dir: Path, attaching: list[bool]) -> None:
    """Attach `out_dir` to the version, its status "running" first: its files change now.

    A failure before this point (a wrong --out, a stop while the model converts) leaves the
    version's files and tags the last export's, still servable.
    """
    attaching.append(True)
    registry.set_tags(version, {STATUS_TAG: RUNNING})
    registry.log_directory(version, out_dir, "model/onnx")


def _replace_export_tags(registry: Registry, version: Registered, tags: dict[str, str]) -> None:
    """Set `tags`, remove the `export.*` tags an earlier export left that they lack, then "ok".

    Without the removal, a tag this export no longer writes (a held-out metric it could not
    compute, a batch size it did not time) kept the earlier export's value as if current.
    """
    registry.set_tags(version, tags)
    current = registry.get(version.name, version.version).tags
    stale = [k for k in current if k.startswith(TAG_PREFIX) and k not in tags and k != STATUS_TAG]
    registry.delete_tags(version, stale)
    registry.set_tags(version, {STATUS_TAG: OK})


def _check_variant(
    adapter: ServingAdapter, servable: ServableModel, variant: str, path: Path
) -> None:
    """`check_adapter` on one exported file; an int8 failure names the file."""
    args = (servable.held_out, servable.target, servable.output_names, servable.monitor_outputs)
    try:
        check_adapter(adapter, _session(path), *args)
    except AdapterError as err:
        if variant == "fp32":
            raise
        raise AdapterError(f"{variant} ONNX ({path.name}): {err}") from err


def _held_out_metric(
    adapter: ServingAdapter, output_names: list[str], target: np.ndarray | None
) -> Callable[[list[np.ndarray]], float]:
    """The adapter's held-out metric over a model's outputs (ValueError when it has none)."""

    def score(outputs: list[np.ndarray]) -> float:
        return adapter.held_out_metric(dict(zip(output_names, outputs, strict=True)), target)

    return score


def export_tags(report: ExportReport) -> dict[str, str]:
    """Version tags that describe an export."""
    tags = {
        "export.parity.passed": str(report.parity.passed),
        "export.parity.max_abs": f"{report.parity.max_abs:.3g}",
        "export.parity.max_rel": f"{report.parity.max_rel:.3g}",
        "export.int8.max_abs_diff": f"{report.int8_max_abs_diff:.3g}",
        "export.int8.method": report.int8_method,
    }
    for variant in report.variants:
        tags[f"export.{variant.name}.sha256"] = variant.sha256
        tags[f"export.{variant.name}.bytes"] = str(variant.size_bytes)
        for batch, ms in variant.latency_ms.items():
            tags[f"export.{variant.name}.ms_batch{batch}"] = f"{ms:.4f}"
    for key, value in report.metric.items():
        tags[f"export.metric.{key}"] = f"{value:.6f}"
    if report.metric:
        tags["export.metric.name"] = report.metric_name
    return tags
