"""The names of the embedding's drift columns, and reading them from a model's outputs.

Apart from `embeddings` (which computes the column, and needs torch): a server records the
column with each request and drift monitoring tests it, neither with torch loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

EMBEDDING = "embedding"
EMBEDDING_DISTANCE = "embedding_distance"


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


def is_embedding_column(column: str) -> bool:
    """Whether a drift column comes from the model's embedding."""
    return column.startswith(EMBEDDING + "_")
