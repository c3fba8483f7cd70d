"""The names of the drift columns a model's outputs give, and reading them from its outputs.

Apart from `embeddings` (which computes the column, and needs torch): a server records the
column with each request and drift monitoring tests it, neither with torch loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

EMBEDDING = "embedding"
EMBEDDING_DISTANCE = "embedding_distance"
#: Suffix of the drift column holding the index of an output's largest value (a class).
ARGMAX = "_argmax"


def monitor_columns(
    outputs: Mapping[str, np.ndarray], monitored: Sequence[str]
) -> dict[str, float]:
    """One request's monitoring-only outputs as named numbers (`name`, or `name1`… if several)."""
    columns: dict[str, float] = {}
    for name in monitored:
        values = np.asarray(outputs[name], dtype=float).reshape(-1)
        if len(values) == 1:
            columns[name] = float(values[0])
        else:
            columns.update({f"{name}{i + 1}": float(v) for i, v in enumerate(values)})
    return columns


def answer_columns(outputs: Mapping[str, np.ndarray], answered: Sequence[str]) -> dict[str, float]:
    """One request's answered outputs as drift columns.

    Each output gives its first value; one of several values per request (a classifier's
    probabilities) also gives the index of its largest, `name` + `ARGMAX` (the predicted
    class), whose mix over requests is what a class shift changes. A request of several
    model rows (a region cut into windows) gives the mean over its rows. An output with
    more than one axis per row (a segmentation's probability maps) gives none: its first
    value would be one pixel's, which describes nothing.
    """
    columns: dict[str, float] = {}
    for name in answered:
        if np.ndim(outputs[name]) > 2:
            continue
        values = np.asarray(outputs[name], dtype=np.float64)
        mean = values.reshape(len(values), -1).mean(axis=0)
        columns[name] = float(mean[0])
        if len(mean) > 1:
            columns[name + ARGMAX] = float(np.argmax(mean))
    return columns


def is_class_column(column: str) -> bool:
    """Whether a drift column holds class indices (`ARGMAX`), tested by their mix."""
    return column.endswith(ARGMAX)


def is_embedding_column(column: str) -> bool:
    """Whether a drift column comes from the model's embedding."""
    return column.startswith(EMBEDDING + "_")
