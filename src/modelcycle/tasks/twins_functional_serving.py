"""Serving functional twins: two people's connectomes (+ age, sex) in, twin probability out."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from modelcycle.serving.adapter import RequestError
from modelcycle.tasks.twins_serving import Finite, PairServing, Person

SYMMETRY_TOLERANCE = 1e-3
#: Connectivity kinds whose every edge lies in [-1, 1] (tangent edges are not bounded).
BOUNDED_KINDS = ("correlation", "partial correlation")


class ConnectomeSubject(Person):
    """One person: a square, symmetric parcel-by-parcel connectivity matrix, age and sex."""

    connectome: list[list[Finite]] = Field(
        description="N×N connectivity (the model's parcels, in GET /v1/models order)",
        max_length=512,
    )


class ConnectomePairRequest(BaseModel):
    """Are `a` and `b` twins?"""

    model_config = ConfigDict(extra="forbid")

    a: ConnectomeSubject
    b: ConnectomeSubject


class FunctionalServing(PairServing):
    """Adapter of the functional twins task; `info["parcels"]` names the matrix rows.

    Robustness shifts act on both subjects' connectomes (the upper-triangle edges, in the
    units of the task's connectivity kind): a global offset (every edge plus s, as head
    motion or skipped global-signal regression inflate connectivity), measurement noise
    (Gaussian, s times each edge's sd over the rows shifted) and parcel dropout (each
    parcel, with probability s per subject, loses its signal: its edges become 0, as for
    a region outside the field of view).
    """

    request_type = ConnectomePairRequest
    shift_sizes: ClassVar[dict[str, tuple[float, ...]]] = {
        "global offset": (0.02, 0.05, 0.1),
        "noise": (0.1, 0.25, 0.5),
        "parcel dropout": (0.05, 0.1, 0.2),
    }

    def __init__(self, info: dict[str, Any]) -> None:
        super().__init__(info)
        self.parcels: list[str] = list(info["parcels"])
        self.n = len(self.parcels)
        self.upper = np.triu_indices(self.n, k=1)
        self.kind: str | None = info.get("kind")  # absent from models saved before it

    def _subject(self, subject: ConnectomeSubject, key: str) -> tuple[np.ndarray, np.ndarray]:
        rows = subject.connectome
        if len(rows) != self.n or any(len(r) != self.n for r in rows):
            shape = f"{len(rows)}×{len(rows[0]) if rows else 0}"
            raise RequestError(
                f"{key}.connectome: shape {shape}; the model takes {self.n}×{self.n} matrices "
                f"over its parcels ({self.parcels[:2]}…, GET /v1/models lists them)."
            )
        matrix = np.asarray(rows, dtype=np.float32)
        asymmetry = float(np.abs(matrix - matrix.T).max())
        if asymmetry > SYMMETRY_TOLERANCE:
            raise RequestError(
                f"{key}.connectome: not symmetric (largest |m[i,j] - m[j,i]| = {asymmetry:.3g}); "
                "send a connectivity matrix, not time series."
            )
        edges = matrix[self.upper]
        if self.kind in BOUNDED_KINDS and edges.size:
            worst = int(np.abs(edges).argmax())
            if abs(float(edges[worst])) > 1 + SYMMETRY_TOLERANCE:  # was answered as if valid
                i, j = int(self.upper[0][worst]), int(self.upper[1][worst])
                raise RequestError(
                    f"{key}.connectome[{i}][{j}] = {float(edges[worst]):.4g} lies outside "
                    f"[-1, 1], where every {self.kind} does; send the {self.kind} matrix the "
                    "model was trained on, not covariances or Fisher z values."
                )
        return edges[None, :], subject.covariates()

    def drift_features(self, inputs: list[np.ndarray]) -> dict[str, float]:
        """Per pair: mean age, and each subject's mean and spread of connectivity."""
        a, a_cov, b, b_cov = inputs
        return {
            "age": float((a_cov[0, 0] + b_cov[0, 0]) / 2),
            "a_mean_connectivity": float(a.mean()),
            "b_mean_connectivity": float(b.mean()),
            "a_connectivity_std": float(a.std()),
            "b_connectivity_std": float(b.std()),
        }

    def shift(
        self, inputs: list[np.ndarray], kind: str, size: float, seed: int
    ) -> list[np.ndarray]:
        """The pairs' rows (a, a_covariates, b, b_covariates) with both connectomes shifted."""
        self.check_shift(kind)
        rng = np.random.default_rng(seed)
        a, a_cov, b, b_cov = (np.array(x, copy=True) for x in inputs)
        sd = np.concatenate([a, b]).std(axis=0).astype(a.dtype)
        first, second = self.upper  # each edge's two parcels
        for X in (a, b):
            if kind == "global offset":
                X += np.asarray(size, dtype=X.dtype)
            elif kind == "noise":
                X += rng.normal(0, 1, X.shape).astype(X.dtype) * np.asarray(size, X.dtype) * sd
            else:  # parcel dropout
                dropped = rng.random((len(X), self.n)) < size
                X[dropped[:, first] | dropped[:, second]] = 0.0
        return [a, a_cov, b, b_cov]

    def _brain_data(self, row: np.ndarray) -> dict[str, Any]:
        """The symmetric matrix (unit diagonal) whose upper triangle is `row`."""
        matrix = np.eye(self.n)
        matrix[self.upper] = row
        matrix.T[self.upper] = row
        return {"connectome": np.round(matrix, 5).tolist()}
