"""Reading BIDS-style TSV tables with errors that name the file, the column and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

import pandas as pd


class DataError(ValueError):
    """Input data that cannot be used as given; the message names the file and the fix."""


def read_bids_tsv(path: Path, required: Sequence[str], id_column: str) -> pd.DataFrame:
    """Read a BIDS TSV (`n/a` is missing) and check its shape.

    Args:
        path: The TSV file.
        required: Columns that must be present.
        id_column: Column holding one unique identifier per row.

    Raises:
        DataError: The file is missing or empty, a required column is absent (with the
            closest existing names), or an identifier repeats.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found. Point data.root at a copy of the dataset.")
    table = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(f"{path}: {_describe_missing(missing, list(table.columns))}")
    if table.empty:
        raise DataError(f"{path}: the table has a header but no rows.")
    _check_unique(table, id_column, path)
    return table


def _describe_missing(missing: Sequence[str], present: list[str]) -> str:
    parts = []
    for column in missing:
        close = difflib.get_close_matches(column, present, n=1, cutoff=0.6)
        hint = f" (found {close[0]!r}: rename it to {column!r})" if close else ""
        parts.append(f"required column {column!r} is missing{hint}")
    return "; ".join(parts) + "."


def _check_unique(table: pd.DataFrame, column: str, path: Path) -> None:
    ids = table[column]
    if ids.isna().any():
        rows = [int(i) + 2 for i in ids.index[ids.isna()][:5]]  # +2: header and 1-based lines
        raise DataError(f"{path}: column {column!r} is empty on line(s) {rows}.")
    repeated = ids[ids.duplicated(keep=False)].unique()
    if len(repeated):
        shown = ", ".join(map(str, repeated[:5]))
        raise DataError(
            f"{path}: column {column!r} has {len(repeated)} repeated value(s): {shown}. "
            "Each row must describe a different participant; remove or merge the duplicates."
        )
