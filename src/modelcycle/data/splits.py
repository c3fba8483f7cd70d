"""Splits grouped by family: no family ever appears in two parts."""

from __future__ import annotations

import numpy as np


def group_kfold(groups: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """Assign whole groups to `n_folds` folds of near-equal size, seeded.

    Groups are shuffled, then placed largest first into the currently smallest fold, so
    fold sizes differ by at most the size of the largest group.

    Returns:
        For each fold, the sorted row indices of its members.
    """
    names, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    if n_folds < 2 or n_folds > len(names):
        raise ValueError(
            f"n_folds={n_folds} must be between 2 and the number of groups ({len(names)})."
        )
    order = np.random.default_rng(seed).permutation(len(names))
    order = order[np.argsort(-sizes[order], kind="stable")]
    fold_of_group = np.empty(len(names), dtype=int)
    load = np.zeros(n_folds, dtype=int)
    for g in order:
        target = int(np.argmin(load))
        fold_of_group[g] = target
        load[target] += sizes[g]
    fold_of_row = fold_of_group[inverse]
    return [np.flatnonzero(fold_of_row == k) for k in range(n_folds)]


def group_holdout(
    groups: np.ndarray, rows: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split `rows` into (kept, held out) with about `fraction` of them held out, by group."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction={fraction} must be strictly between 0 and 1.")
    names = np.unique(groups[rows])
    shuffled = np.random.default_rng(seed).permutation(names)
    held_groups = set(shuffled[: max(1, round(fraction * len(names)))])
    held = np.array([groups[r] in held_groups for r in rows], dtype=bool)
    return np.sort(rows[~held]), np.sort(rows[held])
