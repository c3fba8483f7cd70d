"""Kinship relations between subjects, from family membership and age.

QTIM gives families but no zygosity. Twin-like = same family and same age at session 1;
non-twin siblings = same family, different age; unrelated = different families. Families of
three or more contribute every pair they hold. Opposite-sex twin pairs are certainly dizygotic.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Relation(IntEnum):
    """The relation of a pair of distinct subjects (SELF marks the diagonal)."""

    SELF = -1
    UNRELATED = 0
    TWIN = 1
    SIBLING = 2


def relation_matrix(family: np.ndarray, age: np.ndarray) -> np.ndarray:
    """Relation of every ordered pair, shape (n, n), dtype int8, `Relation` values."""
    same_family = family[:, None] == family[None, :]
    same_age = age[:, None] == age[None, :]
    rel = np.full(same_family.shape, Relation.UNRELATED, dtype=np.int8)
    rel[same_family & same_age] = Relation.TWIN
    rel[same_family & ~same_age] = Relation.SIBLING
    np.fill_diagonal(rel, Relation.SELF)
    return rel


def pairs_of(rel: np.ndarray, relation: Relation) -> np.ndarray:
    """Unordered pairs (i < j) with the given relation, shape (m, 2)."""
    i, j = np.nonzero(np.triu(rel == relation, k=1))
    return np.column_stack([i, j])


def opposite_sex(pairs: np.ndarray, sex: np.ndarray) -> np.ndarray:
    """Mask of pairs whose members differ in sex (for twins: certainly dizygotic)."""
    return np.asarray(sex[pairs[:, 0]] != sex[pairs[:, 1]])


def sample_unrelated(rel: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Draw `count` distinct unrelated pairs (i < j), deterministically for a seed.

    Sampling is without replacement; asking for more pairs than exist returns all of them.
    """
    candidates = pairs_of(rel, Relation.UNRELATED)
    count = min(count, len(candidates))
    chosen = np.random.default_rng(seed).choice(len(candidates), size=count, replace=False)
    return candidates[np.sort(chosen)]
