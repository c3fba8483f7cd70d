"""Scoring a similarity matrix against kinship relations: pair ROC-AUC and co-twin retrieval."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from modelcycle.data.relations import Relation, opposite_sex, pairs_of
from modelcycle.tasks.base import Evaluation

RETRIEVAL_DEPTH = 20
AGE_MATCH = 0.5  # years: whole-year ages (QTIM's) match only when equal


def pair_scores(S: np.ndarray, rel: np.ndarray, relation: Relation) -> np.ndarray:
    """Similarities of every unordered pair with `relation`."""
    pairs = pairs_of(rel, relation)
    return S[pairs[:, 0], pairs[:, 1]]


def scores_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC-AUC of positive pairs' scores against negative ones'; NaN when either is empty."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return float(roc_auc_score(labels, np.r_[pos, neg]))


def pair_auc(S: np.ndarray, rel: np.ndarray, positive: Relation) -> float:
    """ROC-AUC of `positive` pairs against unrelated pairs; NaN when either is absent."""
    return scores_auc(pair_scores(S, rel, positive), pair_scores(S, rel, Relation.UNRELATED))


def retrieval_curve(S: np.ndarray, rel: np.ndarray, depth: int = RETRIEVAL_DEPTH) -> np.ndarray:
    """Share of subjects with a co-twin whose co-twin ranks within the top k, for k=1..depth.

    Every other subject of the set is a candidate; a subject with several co-twins (triplets)
    counts as a hit when any of them is within the top k.
    """
    is_twin = rel == Relation.TWIN
    queries = np.flatnonzero(is_twin.any(axis=1))
    if len(queries) == 0:
        return np.full(depth, np.nan)
    scores = S[queries].astype(float).copy()
    scores[np.arange(len(queries)), queries] = -np.inf  # a subject never retrieves itself
    # rank of the best co-twin = number of other candidates scoring at least as high: ties
    # count against the query, so a collapsed (constant) similarity retrieves nothing
    best = np.where(is_twin[queries], scores, -np.inf).max(axis=1)
    rank = ((scores >= best[:, None]) & ~is_twin[queries]).sum(axis=1)
    return np.array([(rank < k).mean() for k in range(1, depth + 1)])


def matched_auc(
    S: np.ndarray, rel: np.ndarray, sex: np.ndarray, age: np.ndarray, within: float = AGE_MATCH
) -> float:
    """ROC-AUC of same-sex twin-like pairs against unrelated pairs of one sex and age.

    Twin-like pairs share their age by definition and mostly their sex, so age and sex alone
    tell them from random unrelated pairs (on QTIM an AUC of 0.96 from whole years and sex
    only). Against unrelated pairs matched on both (ages at most `within` years apart), only
    what a similarity sees beyond age and sex counts. NaN when either set is empty.
    """
    twins = pairs_of(rel, Relation.TWIN)
    twins = twins[~opposite_sex(twins, sex)]
    unrelated = pairs_of(rel, Relation.UNRELATED)
    a, b = unrelated[:, 0], unrelated[:, 1]
    matched = unrelated[(sex[a] == sex[b]) & (np.abs(age[a] - age[b]) <= within)]
    return scores_auc(S[twins[:, 0], twins[:, 1]], S[matched[:, 0], matched[:, 1]])


def score_similarity(
    S: np.ndarray, rel: np.ndarray, sex: np.ndarray, age: np.ndarray | None = None
) -> Evaluation:
    """All kinship metrics of a symmetric similarity matrix, plus details for plots.

    With `age`, also `auc_twin_vs_matched` (see `matched_auc`).
    """
    curve = retrieval_curve(S, rel)
    twins = pairs_of(rel, Relation.TWIN)
    twin_scores = S[twins[:, 0], twins[:, 1]]
    mixed = opposite_sex(twins, sex)
    metrics = {
        "auc_twin_vs_unrelated": pair_auc(S, rel, Relation.TWIN),
        "auc_sibling_vs_unrelated": pair_auc(S, rel, Relation.SIBLING),
        "top1": float(curve[0]),
        "top5": float(curve[4]),
    }
    if age is not None:
        metrics["auc_twin_vs_matched"] = matched_auc(S, rel, sex, age)
    unrelated = pair_scores(S, rel, Relation.UNRELATED)
    details = {
        "scores": {
            "twin-like, same sex": twin_scores[~mixed],
            "twin-like, opposite sex (DZ)": twin_scores[mixed],
            "non-twin siblings": pair_scores(S, rel, Relation.SIBLING),
            "unrelated": unrelated,
        },
        "retrieval": curve,
        "roc": _roc(twin_scores, unrelated),
    }
    return Evaluation(metrics=metrics, details=details)


def _roc(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(pos) == 0 or len(neg) == 0:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    fpr, tpr, _ = roc_curve(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])
    return fpr, tpr
