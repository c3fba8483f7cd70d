"""The serving side of a task: its request schema, request → model rows, outputs → response.

A served model knows only its ONNX file and its manifest; the task named in the manifest
supplies an adapter (`Task.serving`) built from the manifest's `info`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel


class RequestError(ValueError):
    """A request that validates as JSON but cannot be turned into model inputs (HTTP 422)."""


class UnsupportedMediaError(ValueError):
    """A body whose media type the model does not take (HTTP 415)."""


class Rows(list[np.ndarray]):
    """One request's model rows (an array per input), with what its answer needs of it.

    `decode` returns one instead of a plain list to hand `encode` something the rows no
    longer hold, such as an uploaded image's own size before it was resized; the server
    passes `context` to `encode` with the request's outputs.
    """

    def __init__(self, rows: Iterable[np.ndarray], context: dict[str, Any]) -> None:
        super().__init__(rows)
        self.context = context


#: Training standard deviations beyond which an input value is refused. Real rows reach
#: about 10 (QTIM's measures) or 5 (Wiki-CS stand-in features); a value in other units, from
#: another column or of another embedding lands far beyond, and got a confident answer.
OUTLIER_SD = 50.0


class PlausibleRange:
    """Per column: `OUTLIER_SD` training standard deviations either side of the mean.

    A column without spread in training (sd 0) is not bounded.
    """

    def __init__(self, mean: Any, sd: Any) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.sd = np.asarray(sd, dtype=np.float64)
        spread = np.where(self.sd > 0, OUTLIER_SD * self.sd, np.inf)
        self.low = (self.mean - spread).astype(np.float32)
        self.high = (self.mean + spread).astype(np.float32)

    def outside(self, values: np.ndarray) -> np.ndarray:
        """Which of `values` (columns last) lie beyond the range; NaN does not."""
        return (values < self.low) | (values > self.high)

    def refuse_outside(
        self, values: np.ndarray, where: Callable[[tuple[int, ...]], str], whose: str, why: str
    ) -> None:
        """Raise `RequestError` naming the first of `values` beyond the range, if any.

        The message: `where(index)`=value, how many standard deviations from the training
        `whose` mean it lies, how many more do, and `why` ("no brain was seen: ...").
        """
        beyond = self.outside(values)
        if not beyond.any():
            return
        index = tuple(int(k) for k in np.argwhere(beyond)[0])
        value, mean, sd = float(values[index]), self.mean[index[-1]], self.sd[index[-1]]
        others = f" (and {int(beyond.sum()) - 1} more)" if beyond.sum() > 1 else ""
        raise RequestError(
            f"{where(index)}={value:g} lies {abs(value - mean) / sd:.3g} standard deviations "
            f"from the training {whose} mean ({mean:.4g}, sd {sd:.3g}){others}; beyond "
            f"{OUTLIER_SD:g} {why}"
        )


class ServingAdapter(ABC):
    """Everything task-specific a model server does with one request."""

    #: The pydantic model of one request body (it also becomes the OpenAPI schema).
    request_type: ClassVar[type[BaseModel]]
    #: Media types `decode_bytes` takes as a raw body or as a multipart upload's file
    #: (e.g. image/png); empty when the model takes JSON only.
    byte_types: ClassVar[tuple[str, ...]] = ()
    #: Shifts `modelcycle robustness` injects into model rows, by name, with the sizes it
    #: tries (empty when the task defines none); `shift` applies them.
    shift_sizes: ClassVar[dict[str, tuple[float, ...]]] = {}
    #: What `held_out_metric` measures, as tables and plots name it.
    held_out_metric_name: ClassVar[str] = ""
    #: Top-level fields of a request that each describe one thing and may come from different
    #: examples (twins: the two people, "a" and "b"); the web page then offers a choice per
    #: field. Empty when a request is one whole (an image).
    request_parts: ClassVar[tuple[str, ...]] = ()
    #: Decode requests (and compute their drift features) in a worker thread, not on the
    #: server's event loop: for decoding that takes milliseconds, such as images.
    decode_in_thread: ClassVar[bool] = False
    #: Encode answers in that worker thread too: for answers that take milliseconds to write
    #: (a segmentation mask as a PNG).
    encode_in_thread: ClassVar[bool] = False

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info

    @abstractmethod
    def decode(self, request: BaseModel) -> list[np.ndarray]:
        """One array per model input, each with a leading batch axis of 1.

        Raises:
            RequestError: Values the model cannot take, with what was wrong and how to fix it.
        """

    def request_schema(self, ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
        """The JSON schema of a request to this model (GET /v1/models, the OpenAPI document).

        `request_type`'s, unless the model's own limits are narrower than the type's.
        """
        return self.request_type.model_json_schema(ref_template=ref_template)

    def image_input(self) -> dict[str, Any] | None:
        """How the model takes a whole image, for clients that shrink one to send it.

        `side`: pixels a side the image is resized to (aspect not kept); `background`: the
        RGB transparency is composited onto. None: the model takes no image, or does not
        resize it whole (shrinking would change what it sees).
        """
        return None

    def decode_bytes(self, data: bytes) -> list[np.ndarray]:
        """Like `decode`, for a body of one of `byte_types`.

        Raises:
            UnsupportedMediaError: Bytes that are not of a type the model takes.
            RequestError: Bytes of the right type that cannot become model inputs.
        """
        raise UnsupportedMediaError(f"{type(self).__name__} takes JSON bodies only.")

    def encode(
        self, outputs: dict[str, np.ndarray], context: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The response body for one request's outputs (each with a batch axis of 1).

        `context` is the `Rows.context` `decode` gave the request, if it gave one.
        """
        return {
            name: value.reshape(-1).tolist()[0] if value.size == 1 else value.reshape(-1).tolist()
            for name, value in outputs.items()
        }

    def answer_schema(self, shapes: dict[str, list[Any]]) -> dict[str, Any]:
        """The JSON schema of an answer's `outputs`, for model outputs of these shapes.

        `shapes` holds the answered outputs' ONNX shapes, batch axis first (a name where a
        size varies). `encode` as here answers an output of one value per request as a
        number, any other as a flat list of numbers.
        """
        return object_schema({name: _numbers(shape[1:]) for name, shape in shapes.items()})

    @abstractmethod
    def drift_features(self, inputs: list[np.ndarray]) -> dict[str, float]:
        """A few named numbers that describe one request's input, for drift monitoring."""

    def shift(
        self, inputs: list[np.ndarray], kind: str, size: float, seed: int
    ) -> list[np.ndarray]:
        """Copies of the model rows with the shift `kind` (a key of `shift_sizes`) at `size`.

        Raises:
            ValueError: A kind the adapter does not define.
        """
        raise ValueError(f"{type(self).__name__} defines no robustness shifts.")

    def held_out_metric(self, outputs: dict[str, np.ndarray], target: np.ndarray | None) -> float:
        """The model's score on the saved held-out rows, from its outputs on them."""
        raise ValueError(f"{type(self).__name__} defines no held-out metric.")

    def check_shift(self, kind: str) -> None:
        """Raise a ValueError naming the valid shifts unless `kind` is one of them."""
        if kind not in self.shift_sizes:
            valid = ", ".join(self.shift_sizes) or "none"
            raise ValueError(f"unknown shift {kind!r}; choose from {valid}.")

    @abstractmethod
    def examples(
        self, held_out: list[np.ndarray], target: np.ndarray | None
    ) -> list[dict[str, Any]]:
        """Ready-made requests from held-out rows: [{"label": ..., "request": {...}}, ...].

        With `request_parts`, each example may also say in a few words what each part is:
        "parts": {"a": "F, 25 y", ...}.
        """


class ClassifierAdapter(ServingAdapter):
    """An adapter whose model gives `probabilities` over `info["classes"]`.

    It answers the top-k classes and scores top-1 accuracy on the held-out rows
    (`info["held_out_labels"]`).
    """

    held_out_metric_name = "top-1 accuracy"

    def __init__(self, info: dict[str, Any]) -> None:
        super().__init__(info)
        self.classes: list[str] = list(info["classes"])
        self.top_k = int(info.get("top_k", 5))

    def encode(
        self, outputs: dict[str, np.ndarray], context: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The top-k classes with their probabilities, most probable first."""
        probabilities = outputs["probabilities"].reshape(-1)
        order = np.argsort(-probabilities, kind="stable")[: self.top_k]
        top = [{"class": self.classes[i], "probability": float(probabilities[i])} for i in order]
        return {"class": top[0]["class"], "confidence": top[0]["probability"], "top_k": top}

    def answer_schema(self, shapes: dict[str, list[Any]]) -> dict[str, Any]:
        """The top class, its probability, and the top-k classes with theirs (`encode`)."""
        k = min(self.top_k, len(self.classes))
        ranked = object_schema({"class": self.class_schema(), "probability": SHARE})
        return object_schema(
            {
                "class": self.class_schema("The most probable class"),
                "confidence": SHARE | {"description": "Its probability"},
                "top_k": {
                    "type": "array",
                    "items": ranked,
                    "minItems": k,
                    "maxItems": k,
                    "description": f"The {k} most probable classes, most probable first",
                },
            }
        )

    def class_schema(self, description: str | None = None) -> dict[str, Any]:
        """The JSON schema of one class name of this model."""
        schema: dict[str, Any] = {"type": "string", "enum": list(self.classes)}
        return schema | {"description": description} if description else schema

    def held_out_metric(self, outputs: dict[str, np.ndarray], target: np.ndarray | None) -> float:
        """Top-1 accuracy against the held-out rows' classes (`info["held_out_labels"]`)."""
        labels = self.info.get("held_out_labels")
        if not labels:
            raise ValueError("the model was saved without held-out labels; re-register it.")
        index = {name: i for i, name in enumerate(self.classes)}
        truth = np.array([index[name] for name in labels])
        predicted = outputs["probabilities"].argmax(axis=1)
        return float((predicted == truth).mean())


#: A probability or a share: a number from 0 to 1.
SHARE: dict[str, Any] = {"type": "number", "minimum": 0, "maximum": 1}


def object_schema(properties: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The JSON schema of an object with exactly these properties, all required."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _numbers(dims: list[Any]) -> dict[str, Any]:
    """How the default `encode` answers an output of these per-request dimensions."""
    number = {"type": "number"}
    if not all(isinstance(d, int) and d > 0 for d in dims):  # a size that varies
        return {"anyOf": [number, {"type": "array", "items": number}]}
    size = int(np.prod(dims)) if dims else 1
    if size == 1:
        return number
    return {"type": "array", "items": number, "minItems": size, "maxItems": size}
