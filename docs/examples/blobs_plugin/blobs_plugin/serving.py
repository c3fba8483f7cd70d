"""How a served blobs model reads requests: numpy and pydantic only, so a server needs no torch."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from modelcycle.serving.adapter import ServingAdapter


class Point(BaseModel):
    """One request: four finite numbers."""

    x: list[float] = Field(min_length=4, max_length=4)


class BlobsServing(ServingAdapter):
    """JSON in (`{"x": [...]}`), the logit out."""

    request_type = Point

    def decode(self, request: BaseModel) -> list[np.ndarray]:
        assert isinstance(request, Point)
        return [np.array([request.x], dtype=np.float32)]

    def drift_features(self, inputs: list[np.ndarray]) -> dict[str, float]:
        return {f"x{i}": float(v) for i, v in enumerate(inputs[0][0])}

    def examples(
        self, held_out: list[np.ndarray], target: np.ndarray | None
    ) -> list[dict[str, Any]]:
        return [
            {"label": f"point {i}", "request": {"x": row.tolist()}}
            for i, row in enumerate(held_out[0][:3])
        ]
