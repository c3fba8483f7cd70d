"""Feature processing fitted on the training part only: impute, standardize, residualize."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ResidualStandardizer:
    """Median imputation, z-scoring and covariate regression, all fitted on training rows.

    `transform` returns features with the covariates' linear effect removed, rescaled to unit
    variance on the training rows: shape (n, n_features).
    """

    median: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    beta: np.ndarray  # (1 + n_covariates, n_features)
    residual_scale: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray, covariates: np.ndarray) -> ResidualStandardizer:
        """Fit on training rows `X` (n, f, NaN allowed) with `covariates` (n, c)."""
        median = np.nanmedian(X, axis=0)
        filled = np.where(np.isnan(X), median, X)
        mean, scale = filled.mean(axis=0), _safe_std(filled)
        Z = (filled - mean) / scale
        design = _design(covariates)
        beta, *_ = np.linalg.lstsq(design, Z, rcond=None)
        residual_scale = _safe_std(Z - design @ beta)
        return cls(median, mean, scale, beta, residual_scale)

    def transform(self, X: np.ndarray, covariates: np.ndarray) -> np.ndarray:
        """Apply the fitted processing to any rows."""
        filled = np.where(np.isnan(X), self.median, X)
        Z = (filled - self.mean) / self.scale
        return (Z - _design(covariates) @ self.beta) / self.residual_scale

    def to_dict(self) -> dict[str, list[Any]]:
        """The fitted arrays as plain lists (JSON), for a saved model's manifest."""
        return {f.name: getattr(self, f.name).tolist() for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, list[Any]]) -> ResidualStandardizer:
        """Rebuild from `to_dict`'s lists."""
        return cls(**{f.name: np.asarray(values[f.name], dtype=float) for f in fields(cls)})


def _design(covariates: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones(len(covariates)), covariates])


def _safe_std(X: np.ndarray) -> np.ndarray:
    std = X.std(axis=0)
    return np.where(std > 0, std, 1.0)
