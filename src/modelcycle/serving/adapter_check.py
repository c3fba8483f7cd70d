"""A task's serving adapter run as the server runs it, on its own examples, against its ONNX.

A `decode` that gave float64 arrays, dropped the batch axis or gave another number of
arrays than the model takes passed export and failed only when a server started (an ONNX
Runtime traceback in its warm-up). Export runs this check instead: each of a few of the
adapter's example requests is validated, decoded, described for drift, run through the
ONNX session and encoded into a JSON answer, as `serving.app` does with a request.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from modelcycle.serving.adapter import Rows, ServingAdapter

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Example requests checked: a few, enough to catch a contract broken for every request.
CHECKED_EXAMPLES = 3

# ONNX Runtime's names of tensor element types, as numpy dtypes.
_ONNX_DTYPES = {
    f"tensor({name})": np.dtype(dtype)
    for name, dtype in [
        ("float", np.float32),
        ("double", np.float64),
        ("float16", np.float16),
        ("uint8", np.uint8),
        ("int8", np.int8),
        ("uint16", np.uint16),
        ("int16", np.int16),
        ("int32", np.int32),
        ("int64", np.int64),
        ("uint32", np.uint32),
        ("uint64", np.uint64),
        ("bool", np.bool_),
    ]
}


class AdapterError(RuntimeError):
    """A serving adapter whose requests the model or the server cannot take."""


@dataclass(frozen=True)
class ModelInput:
    """One input of an ONNX model, as ONNX Runtime gives it.

    Attributes:
        name: Its name in the graph.
        dtype: Its element type (None for a type numpy does not hold, such as strings).
        shape: Its dimensions, batch axis first: a size, or a name (None) where it varies.
    """

    name: str
    dtype: np.dtype[Any] | None
    shape: tuple[int | str | None, ...]

    def describe(self) -> str:
        """What the input takes, e.g. "float32 of shape (batch, 4)"."""
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype or 'a non-numeric type'} of shape ({dims})"

    def takes(self, array: np.ndarray) -> bool:
        """Whether `array` has this input's dtype, rank and fixed sizes (batch axis aside)."""
        fixed = [(d, n) for d, n in zip(self.shape[1:], array.shape[1:], strict=False)]
        return (
            (self.dtype is None or array.dtype == self.dtype)
            and array.ndim == len(self.shape)
            and all(not isinstance(d, int) or d == n for d, n in fixed)
        )


def model_inputs(session: Any) -> list[ModelInput]:
    """The inputs of an `onnxruntime.InferenceSession`, in order."""
    return [
        ModelInput(i.name, _ONNX_DTYPES.get(i.type), tuple(i.shape)) for i in session.get_inputs()
    ]


def check_adapter(
    adapter: ServingAdapter,
    session: Any,
    held_out: list[np.ndarray],
    target: np.ndarray | None,
    output_names: Sequence[str],
    monitor_outputs: Sequence[str] = (),
) -> int:
    """Run the adapter on its first `CHECKED_EXAMPLES` example requests as the server would.

    Args:
        adapter: The task's adapter, built from the model's `info`.
        session: An `onnxruntime.InferenceSession` of the exported model.
        held_out: The model's held-out rows, one array per input (`examples` reads them).
        target: Their labels, if saved.
        output_names: The model's outputs, in the order the server asks for them.
        monitor_outputs: Outputs recorded for monitoring only: `encode` never sees them.

    Returns:
        How many example requests were checked (0, with a warning, when it gives none).

    Raises:
        AdapterError: Naming the adapter's method, what it gave, what the model takes and
            how to fix it.
    """
    name = type(adapter).__name__
    examples = _calling(f"{name}.examples", adapter.examples, held_out, target)
    if not examples:
        log.warning("%s.examples gave no requests: its decode and encode are unchecked", name)
        return 0
    inputs = model_inputs(session)
    answered = [n for n in output_names if n not in monitor_outputs]
    for number, example in enumerate(examples[:CHECKED_EXAMPLES], start=1):
        rows = _decoded(adapter, example, number)
        check_rows(f"{name}.decode", rows, inputs)
        _calling(f"{name}.drift_features", adapter.drift_features, rows)
        outputs = _run(session, f"{name}.decode", inputs, rows, output_names)
        _check_answer(adapter, {n: outputs[n] for n in answered}, rows)
    return min(len(examples), CHECKED_EXAMPLES)


def _calling(what: str, function: Callable[..., T], *args: Any) -> T:
    """`function(*args)`, its failure an AdapterError naming `what` failed."""
    try:
        return function(*args)
    except Exception as err:
        raise AdapterError(
            f"{what} failed when export ran the adapter on the model's example requests, as "
            f"a server will: {type(err).__name__}: {err}"
        ) from err


def _decoded(adapter: ServingAdapter, example: Any, number: int) -> list[np.ndarray]:
    """The model rows `decode` gives example `number` once `request_type` validated it."""
    name = type(adapter).__name__
    if not isinstance(example, dict) or "request" not in example:
        raise AdapterError(
            f"{name}.examples gave example {number} as {str(example)[:80]!r}; give each as "
            '{"label": ..., "request": {...}}, the request a body the server takes.'
        )
    validate = adapter.request_type.model_validate
    request = _calling(f"{name}.request_type.model_validate", validate, example["request"])
    return _calling(f"{name}.decode", adapter.decode, request)


def check_rows(what: str, rows: Any, inputs: list[ModelInput]) -> None:
    """Refuse model rows (`what` returned them) the model cannot take, saying how to fix it.

    Rows are one array per model input, in order, each of its dtype and rank, with the
    request's rows (1, or several, such as the windows of a large image) along axis 0.
    """
    names = ", ".join(f"{i.name} ({i.describe()})" for i in inputs)
    if not isinstance(rows, list | tuple) or len(rows) != len(inputs):
        got = f"{len(rows)} arrays" if isinstance(rows, list | tuple) else type(rows).__name__
        raise AdapterError(
            f"{what} returned {got}, but the model takes {len(inputs)} "
            f"input{'s' if len(inputs) > 1 else ''}: {names}. "
            "Return a list of one array per model input, in that order."
        )
    for array, model_input in zip(rows, inputs, strict=True):
        _check_array(what, array, model_input)
    counts = {i.name: len(a) for a, i in zip(rows, inputs, strict=True)}
    if len(set(counts.values())) > 1 or 0 in counts.values():
        raise AdapterError(
            f"{what} returned arrays with these numbers of rows along axis 0: {counts}. "
            "Give every array the request's rows along axis 0, the same number (at least 1)."
        )


def _check_array(what: str, array: Any, model_input: ModelInput) -> None:
    dtype = model_input.dtype or np.dtype(np.float32)
    fix = (
        f"Return np.{dtype.name} arrays with a leading batch axis: "
        f"np.array([values], dtype=np.{dtype.name})."
    )
    if not isinstance(array, np.ndarray):
        raise AdapterError(
            f"{what} returned input {model_input.name!r} as a {type(array).__name__}, not a "
            f"numpy array; the model takes {model_input.describe()}. {fix}"
        )
    if not model_input.takes(array):
        raise AdapterError(
            f"{what} returned input {model_input.name!r} as {array.dtype} of shape "
            f"{array.shape}, but the model takes {model_input.describe()}. {fix}"
        )


def _run(
    session: Any,
    what: str,
    inputs: list[ModelInput],
    rows: list[np.ndarray],
    output_names: Sequence[str],
) -> dict[str, np.ndarray]:
    """The model's outputs on one request's rows, by name (`ServedModel.run`)."""
    feeds = {i.name: array for i, array in zip(inputs, rows, strict=True)}
    try:
        outputs = session.run(list(output_names), feeds)
    except Exception as err:  # ONNX Runtime's own errors share no base class
        first = str(err).splitlines()[0][:300]
        raise AdapterError(
            f"The model refused the arrays {what} returned for its own example request "
            f"({', '.join(f'{n}: {a.dtype} {a.shape}' for n, a in feeds.items())}): {first}"
        ) from err
    return dict(zip(output_names, outputs, strict=True))


def _check_answer(
    adapter: ServingAdapter, outputs: dict[str, np.ndarray], rows: list[np.ndarray]
) -> None:
    """`encode` the outputs as the server does, then check the answer is JSON it can send."""
    name = type(adapter).__name__
    # a context only for adapters that made one, as the server passes it
    context = (rows.context,) if isinstance(rows, Rows) else ()
    answer = _calling(f"{name}.encode", adapter.encode, outputs, *context)
    try:  # as the server's JSONResponse writes it
        json.dumps(answer, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise AdapterError(
            f"{name}.encode answered what JSON cannot hold ({err}); return plain numbers, "
            "strings, lists and dicts: float(x) for a numpy number, x.tolist() for an array."
        ) from err
