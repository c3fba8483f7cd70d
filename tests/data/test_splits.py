import numpy as np
import pandas as pd
import pytest

from modelcycle.data.splits import group_holdout, group_kfold


def _families(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.repeat(np.arange(n), rng.integers(1, 5, size=n)).astype(str)


def test_no_family_crosses_folds_and_every_row_is_tested_once() -> None:
    groups = _families(60)
    folds = group_kfold(groups, 5, seed=1)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(groups)))
    seen: dict[str, int] = {}
    for k, rows in enumerate(folds):
        for g in set(groups[rows]):
            assert seen.setdefault(g, k) == k, f"family {g} in folds {seen[g]} and {k}"


def test_folds_are_balanced_and_seeded() -> None:
    groups = _families(100)
    sizes = [len(f) for f in group_kfold(groups, 5, seed=1)]
    assert max(sizes) - min(sizes) <= 4  # at most the largest family
    a, b = group_kfold(groups, 5, seed=1), group_kfold(groups, 5, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    c = group_kfold(groups, 5, seed=2)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_holdout_splits_by_family() -> None:
    groups = _families(50)
    rows = np.arange(len(groups))
    kept, held = group_holdout(groups, rows, 0.2, seed=0)
    assert set(groups[kept]).isdisjoint(groups[held])
    assert 0.1 < len(set(groups[held])) / 50 < 0.3


def test_holdout_strata_reach_the_held_out_part() -> None:
    groups = np.array([f"f{i // 2}" for i in range(40)] + [f"s{i}" for i in range(200)])
    paired = np.r_[np.ones(40, int), np.zeros(200, int)]  # 20 paired families, 200 singletons
    rows = np.arange(len(groups))
    for seed in range(10):
        _, held = group_holdout(groups, rows, 0.1, seed, strata=paired)
        assert paired[held].sum() == 4  # 2 of the 20 paired families, every time
        assert (paired[held] == 0).sum() == 20


def test_bad_fold_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="n_folds=7"):
        group_kfold(np.array(["a", "b", "c"]), 7, seed=0)


def test_real_families_never_cross_splits(real_qtim) -> None:
    families = pd.read_csv(real_qtim / "participants.tsv", sep="\t")["family_id"].to_numpy()
    folds = group_kfold(families, 5, seed=42)
    for i, a in enumerate(folds):
        for b in folds[i + 1 :]:
            assert set(families[a]).isdisjoint(families[b])
