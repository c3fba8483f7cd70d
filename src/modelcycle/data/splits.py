"""Grouped splits: no group (a family, a slide) ever appears in two parts."""

from __future__ import annotations

import numpy as np

from modelcycle.data.tables import DataError


def group_kfold(
    groups: np.ndarray, n_folds: int, seed: int, what: str = "families", holdout: bool = False
) -> list[np.ndarray]:
    """Assign whole groups to `n_folds` folds of near-equal size, seeded.

    Groups are shuffled, then placed largest first into the currently smallest fold, so
    fold sizes differ by at most the size of the largest group. `what` names the groups in
    the error message (families, slides); `holdout` says there that the caller also takes
    cv.n_folds=1 (one grouped holdout).

    Returns:
        For each fold, the sorted row indices of its members.
    """
    names, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    if n_folds < 2 or n_folds > len(names):
        raise DataError(
            f"cv.n_folds={n_folds}: give between 2 and the number of {what} ({len(names)})"
            + (", or 1 for one grouped holdout" if holdout else "")
            + f"; every fold holds out whole {what}."
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
    groups: np.ndarray,
    rows: np.ndarray,
    fraction: float,
    seed: int,
    strata: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split `rows` into (kept, held out), about `fraction` of the groups held out.

    Args:
        groups: Group of every row of the dataset.
        rows: The rows to split.
        fraction: Share of groups to hold out.
        seed: Seed of the shuffle.
        strata: Optional label of every row; a group's stratum is its rows' largest label,
            and each stratum gives up `fraction` of its groups (at least one), so that, for
            example, families with twins always reach the held-out part.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction={fraction} must be strictly between 0 and 1.")
    names, inverse = np.unique(groups[rows], return_inverse=True)
    labels = np.zeros(len(rows), dtype=int) if strata is None else np.asarray(strata)[rows]
    group_label = np.full(len(names), labels.min())
    np.maximum.at(group_label, inverse, labels)
    rng = np.random.default_rng(seed)
    held_groups = np.zeros(len(names), dtype=bool)
    for label in np.unique(group_label):
        members = rng.permutation(np.flatnonzero(group_label == label))
        held_groups[members[: max(1, round(fraction * len(members)))]] = True
    held = held_groups[inverse]
    return np.sort(rows[~held]), np.sort(rows[held])
