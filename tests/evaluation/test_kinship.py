"""Kinship scoring: pair ROC-AUC, co-twin retrieval and the per-relation details."""

from __future__ import annotations

import numpy as np
import pytest

from modelcycle.data.relations import Relation, relation_matrix
from modelcycle.evaluation.kinship import (
    matched_auc,
    pair_auc,
    pair_scores,
    retrieval_curve,
    score_similarity,
)

# fam A: twins 0, 1; fam B: twins 2, 3; fam C: singleton 4
FAMILY5 = np.array(["A", "A", "B", "B", "C"])
AGE5 = np.array([20, 20, 30, 30, 40])


def _symmetric(upper: dict[tuple[int, int], float], n: int) -> np.ndarray:
    S = np.zeros((n, n))
    for (i, j), v in upper.items():
        S[i, j] = S[j, i] = v
    return S


def test_perfect_similarity_gives_auc_and_top1_of_one() -> None:
    rel = relation_matrix(FAMILY5, AGE5)
    S = (rel == Relation.TWIN).astype(float)
    assert pair_auc(S, rel, Relation.TWIN) == 1.0
    curve = retrieval_curve(S, rel, depth=3)
    np.testing.assert_array_equal(curve, [1.0, 1.0, 1.0])


def test_reversed_similarity_gives_auc_zero() -> None:
    rel = relation_matrix(FAMILY5, AGE5)
    S = -(rel == Relation.TWIN).astype(float)
    assert pair_auc(S, rel, Relation.TWIN) == 0.0
    # every twin's co-twin is below the 3 other candidates: found only at k = 4
    np.testing.assert_array_equal(retrieval_curve(S, rel, depth=4), [0, 0, 0, 1])


def test_pair_scores_pick_the_relation_pairs() -> None:
    rel = relation_matrix(FAMILY5, AGE5)
    S = np.arange(25, dtype=float).reshape(5, 5)  # S[i, j] = 5 i + j, read above the diagonal
    np.testing.assert_array_equal(pair_scores(S, rel, Relation.TWIN), [1.0, 13.0])
    assert len(pair_scores(S, rel, Relation.UNRELATED)) == 10 - 2


def test_co_twin_second_for_one_subject() -> None:
    rel = relation_matrix(FAMILY5, AGE5)
    S = _symmetric(
        {
            (0, 1): 0.5,  # twins A
            (0, 4): 0.9,  # subject 0 prefers the singleton: co-twin 1 ranks 2nd
            (0, 2): 0.1,
            (0, 3): 0.1,
            (1, 2): 0.2,
            (1, 3): 0.2,
            (1, 4): 0.3,  # subject 1 still ranks 0 first
            (2, 3): 0.8,  # twins B
            (2, 4): 0.4,
            (3, 4): 0.4,
        },
        5,
    )
    # queries 0, 1, 2, 3 (4 has no co-twin): 3 of 4 hits at k=1, all at k=2
    np.testing.assert_allclose(retrieval_curve(S, rel, depth=3), [0.75, 1.0, 1.0])
    evaluation = score_similarity(S, rel, np.array(["M"] * 5))
    assert evaluation.metrics["top1"] == pytest.approx(0.75)
    assert evaluation.metrics["top5"] == pytest.approx(1.0)
    # twin scores 0.5, 0.8 vs unrelated 0.9, .1, .1, .2, .2, .3, .4, .4: each beats 7 of 8
    assert evaluation.metrics["auc_twin_vs_unrelated"] == pytest.approx(14 / 16)


def test_a_subject_never_retrieves_itself() -> None:
    rel = relation_matrix(FAMILY5, AGE5)
    S = (rel == Relation.TWIN).astype(float)
    np.fill_diagonal(S, 1e9)
    np.testing.assert_array_equal(retrieval_curve(S, rel, depth=2), [1.0, 1.0])


def test_triplets_hit_when_any_co_twin_ranks_within_k() -> None:
    # fam T: triplets 0, 1, 2; fam U: singletons 3, 4 (different ages)
    family = np.array(["T", "T", "T", "U", "V"])
    age = np.array([25, 25, 25, 30, 31])
    rel = relation_matrix(family, age)
    S = _symmetric(
        {
            (0, 1): 0.0,
            (0, 2): 0.9,  # for 0: co-twin 2 first, co-twin 1 last → hit at k=1
            (0, 3): 0.5,
            (0, 4): 0.5,
            (1, 2): 0.1,  # for 1: 3 and 4 (0.6, 0.7) above both co-twins (0.0, 0.1) → rank 2
            (1, 3): 0.6,
            (1, 4): 0.7,
            (2, 3): 0.2,  # for 2: co-twin 0 (0.9) first
            (2, 4): 0.3,
        },
        5,
    )
    np.testing.assert_allclose(retrieval_curve(S, rel, depth=4), [2 / 3, 2 / 3, 1.0, 1.0])


def test_no_relation_gives_nan() -> None:
    rel = relation_matrix(FAMILY5, AGE5)  # no family holds two different ages
    S = np.random.default_rng(0).normal(size=(5, 5))
    assert np.isnan(pair_auc(S, rel, Relation.SIBLING))
    evaluation = score_similarity(S + S.T, rel, np.array(list("MMFFM")))
    assert np.isnan(evaluation.metrics["auc_sibling_vs_unrelated"])
    assert not np.isnan(evaluation.metrics["auc_twin_vs_unrelated"])
    # without any twin there is nothing to retrieve
    singletons = relation_matrix(np.array(list("ABCD")), np.array([20, 20, 20, 20]))
    assert np.isnan(retrieval_curve(np.zeros((4, 4)), singletons, depth=3)).all()


def test_score_similarity_details_group_pairs_by_relation() -> None:
    # fam A: same-sex twins 0, 1; fam B: opposite-sex twins 2, 3 + older sibling 4;
    # fam C: singleton 5
    family = np.array(["A", "A", "B", "B", "B", "C"])
    age = np.array([20, 20, 25, 25, 28, 40])
    sex = np.array(["M", "M", "M", "F", "F", "F"])
    rel = relation_matrix(family, age)
    S = np.zeros((6, 6))
    for i in range(6):
        for j in range(i + 1, 6):
            S[i, j] = S[j, i] = 10 * i + j  # a pair's score names the pair
    evaluation = score_similarity(S, rel, sex)
    scores = evaluation.details["scores"]
    assert set(scores) == {
        "twin-like, same sex",
        "twin-like, opposite sex (DZ)",
        "non-twin siblings",
        "unrelated",
    }
    np.testing.assert_array_equal(scores["twin-like, same sex"], [1])
    np.testing.assert_array_equal(scores["twin-like, opposite sex (DZ)"], [23])
    np.testing.assert_array_equal(sorted(scores["non-twin siblings"]), [24, 34])
    assert len(scores["unrelated"]) == 15 - 2 - 2
    assert {1, 23, 24, 34}.isdisjoint(scores["unrelated"])
    assert evaluation.details["retrieval"].shape == (20,)
    fpr, tpr = evaluation.details["roc"]
    assert fpr[0] == 0 and tpr[-1] == 1 and fpr[-1] == 1
    assert set(evaluation.metrics) == {
        "auc_twin_vs_unrelated",
        "auc_sibling_vs_unrelated",
        "top1",
        "top5",
    }


def test_roc_without_twins_is_the_diagonal() -> None:
    family = np.array(list("ABCD"))
    rel = relation_matrix(family, np.array([20, 20, 20, 20]))
    evaluation = score_similarity(np.eye(4), rel, np.array(list("MFMF")))
    fpr, tpr = evaluation.details["roc"]
    np.testing.assert_array_equal(fpr, [0.0, 1.0])
    np.testing.assert_array_equal(tpr, [0.0, 1.0])
    assert np.isnan(evaluation.metrics["top1"])


def test_ties_count_against_the_query() -> None:
    rel = relation_matrix(FAMILY5, AGE5)
    # collapsed similarity: the co-twin ties with all 3 other candidates
    np.testing.assert_array_equal(retrieval_curve(np.ones((5, 5)), rel, depth=4), [0, 0, 0, 1])
    # subject 0's co-twin ties with the singleton: rank 1 for subject 0 only
    S = (rel == Relation.TWIN).astype(float)
    S[0, 4] = S[4, 0] = 1.0
    np.testing.assert_allclose(retrieval_curve(S, rel, depth=2), [0.75, 1.0])


def _cohort(families: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Twin families of whole-year ages 12-30 and random sex: family, age and sex per person."""
    rng = np.random.default_rng(seed)
    family = np.repeat(np.arange(families), 2).astype(str)
    age = np.repeat(rng.integers(12, 31, families), 2).astype(float)
    sex = np.repeat(rng.choice(["M", "F"], families), 2)
    return family, age, sex


def test_a_similarity_of_age_and_sex_alone_is_found_out_by_matching() -> None:
    family, age, sex = _cohort(200, seed=0)
    rel = relation_matrix(family, age)
    S = -np.abs(age[:, None] - age[None, :]) - (sex[:, None] != sex[None, :])
    evaluation = score_similarity(S, rel, sex, age)
    assert evaluation.metrics["auc_twin_vs_unrelated"] > 0.9  # what age and sex give away
    assert evaluation.metrics["auc_twin_vs_matched"] == pytest.approx(0.5)  # all ties


def test_a_similarity_beyond_age_and_sex_keeps_its_matched_auc() -> None:
    family, age, sex = _cohort(200, seed=1)
    rel = relation_matrix(family, age)
    rng = np.random.default_rng(2)
    traits = np.repeat(rng.normal(size=(200, 8)), 2, axis=0) + rng.normal(size=(400, 8))
    S = np.asarray(np.corrcoef(traits))  # shared family traits, nothing of age or sex
    auc = matched_auc(S, rel, sex, age)
    assert auc > 0.8
    assert auc == pytest.approx(
        score_similarity(S, rel, sex).metrics["auc_twin_vs_unrelated"], abs=0.05
    )
    assert "auc_twin_vs_matched" not in score_similarity(S, rel, sex).metrics  # no age, no metric


def test_matched_pairs_are_same_sex_and_within_the_age_window() -> None:
    family = np.array(list("AABCD"))
    age = np.array([20.0, 20.0, 20.0, 20.4, 21.0])
    sex = np.array(list("MMMFM"))
    rel = relation_matrix(family, age)
    # twins 0-1 score 0.5; the only matched unrelated pairs are 0-2 and 1-2 (C: 20, M);
    # D is female and E a year older, so their high scores must not count
    S = _symmetric({(0, 1): 0.5, (0, 2): 0.4, (1, 2): 0.6, (0, 3): 0.9, (0, 4): 0.9}, 5)
    assert matched_auc(S, rel, sex, age) == 0.5
    # a 1-year window adds 0-4 (0.9), 1-4 and 2-4 (0): the twins beat 3 of 5
    assert matched_auc(S, rel, sex, age, within=1.0) == pytest.approx(0.6)
    apart = np.array([20.0, 20.0, 22.0, 24.0, 26.0])  # no unrelated pair within the window
    assert np.isnan(matched_auc(S, relation_matrix(family, apart), sex, apart))
