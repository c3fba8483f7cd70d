import numpy as np

from modelcycle.data.relations import (
    Relation,
    opposite_sex,
    pairs_of,
    relation_matrix,
    sample_unrelated,
)

# fam A: twins (0, 1) + older sibling 2; fam B: triplets 3, 4, 5; fam C: singleton 6
FAMILY = np.array(["A", "A", "A", "B", "B", "B", "C"])
AGE = np.array([20, 20, 24, 30, 30, 30, 40])
SEX = np.array(["M", "F", "M", "F", "F", "F", "M"])


def test_relations_from_family_and_age() -> None:
    rel = relation_matrix(FAMILY, AGE)
    assert (np.diag(rel) == Relation.SELF).all()
    assert (rel == rel.T).all()
    assert rel[0, 1] == Relation.TWIN
    assert rel[0, 2] == Relation.SIBLING and rel[1, 2] == Relation.SIBLING
    assert rel[0, 3] == Relation.UNRELATED and rel[6, 5] == Relation.UNRELATED


def test_families_of_three_are_kept_with_every_pair() -> None:
    rel = relation_matrix(FAMILY, AGE)
    twins = {tuple(p) for p in pairs_of(rel, Relation.TWIN)}
    assert twins == {(0, 1), (3, 4), (3, 5), (4, 5)}
    assert {tuple(p) for p in pairs_of(rel, Relation.SIBLING)} == {(0, 2), (1, 2)}


def test_opposite_sex_twins_are_flagged() -> None:
    twins = pairs_of(relation_matrix(FAMILY, AGE), Relation.TWIN)
    flagged = {tuple(p) for p in twins[opposite_sex(twins, SEX)]}
    assert flagged == {(0, 1)}


def test_negative_sampling_is_deterministic_and_without_replacement() -> None:
    rel = relation_matrix(FAMILY, AGE)
    a, b = sample_unrelated(rel, 8, seed=3), sample_unrelated(rel, 8, seed=3)
    assert np.array_equal(a, b)
    assert len({tuple(p) for p in a}) == 8
    assert all(rel[i, j] == Relation.UNRELATED and i < j for i, j in a)
    assert not np.array_equal(a, sample_unrelated(rel, 8, seed=4))


def test_negative_sampling_caps_at_what_exists() -> None:
    rel = relation_matrix(FAMILY, AGE)
    n_unrelated = len(pairs_of(rel, Relation.UNRELATED))
    assert len(sample_unrelated(rel, 10_000, seed=0)) == n_unrelated
