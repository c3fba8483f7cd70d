"""How much of the structural twins scores age and sex alone explain.

Twin-like pairs share their age by definition and mostly their sex, and QTIM gives ages in
whole years, so a similarity that only reads age and sex already tells them from random
unrelated pairs. This prints, on the task's own folds (family-grouped, seed 42), the ROC-AUC
of three similarities: twin-like against all unrelated pairs (the task's main metric),
same-sex twin-like pairs against all unrelated pairs, and the same against unrelated pairs of
the same sex and age (`auc_twin_vs_matched`); the last two differ only in the matching:

- age and sex alone: -|age difference| - (1 if the sexes differ);
- the correlation baseline as the task computes it (z-scores with age, sex and acquisition
  regressed out, fitted on each fold's training part);
- the same correlation without the regression (z-scores only).

    python bench/twins_covariates.py --data ../shared/data/qtim [--folds 5] [--seed 42]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch import nn

from modelcycle.data.features import ResidualStandardizer
from modelcycle.data.qtim import QTIMSource
from modelcycle.data.relations import Relation, opposite_sex, pairs_of
from modelcycle.evaluation.kinship import matched_auc, pair_auc, pair_scores, scores_auc
from modelcycle.tasks.base import Fold
from modelcycle.tasks.twins import TwinsData, TwinsTask

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("vs unrelated", "same sex vs unrelated", "same sex vs matched")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/qtim")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if not (args.data / "participants.tsv").is_file():
        parser.error(
            f"--data {args.data}: no participants.tsv there; give a copy of QTIM (ds004169) "
            "holding it and the FreeSurfer tables, e.g. ../shared/data/qtim"
        )
    if args.folds < 2:
        parser.error(f"--folds {args.folds}: give at least 2")
    data = TwinsData.from_cohort(QTIMSource(root=args.data).load())
    task = TwinsTask(QTIMSource(root=args.data), encoder=nn.Identity)  # folds only: no model
    folds = task.folds(data, args.folds, args.seed)
    age, sex = data.covariates[:, 0], data.sex
    male = (sex == "M").astype(float)

    def by_covariates(fold: Fold) -> np.ndarray:
        a, s = age[fold.test], male[fold.test]
        return -np.abs(a[:, None] - a[None, :]) - np.abs(s[:, None] - s[None, :])

    def correlation(covariates: np.ndarray) -> Callable[[Fold], np.ndarray]:
        def similarity(fold: Fold) -> np.ndarray:
            fitted = ResidualStandardizer.fit(data.X[fold.train], covariates[fold.train])
            return np.asarray(np.corrcoef(fitted.transform(data.X, covariates)[fold.test]))

        return similarity

    similarities = {
        "age and sex alone": by_covariates,
        "baseline (regressed, the task's)": correlation(data.covariates),
        "baseline without regression": correlation(np.empty((len(data.X), 0))),
    }
    print(f"{len(data.X)} subjects, {args.folds} family-grouped folds, seed {args.seed}")
    print(f"{'similarity':34s}" + "".join(f"  {c:>22s}" for c in COLUMNS))
    for name, similarity in similarities.items():
        scores = np.array([_aucs(similarity(f), data, f.test) for f in folds])
        cells = [f"{scores[:, i].mean():.3f} ± {scores[:, i].std(ddof=1):.3f}" for i in (0, 1, 2)]
        print(f"{name:34s}" + "".join(f"  {c:>22s}" for c in cells))


def _aucs(S: np.ndarray, data: TwinsData, rows: np.ndarray) -> tuple[float, float, float]:
    """The three AUCs of `COLUMNS` for a similarity `S` over `rows`."""
    rel, sex, age = data.relations[np.ix_(rows, rows)], data.sex[rows], data.covariates[rows, 0]
    twins = pairs_of(rel, Relation.TWIN)
    same_sex = twins[~opposite_sex(twins, sex)]
    return (
        pair_auc(S, rel, Relation.TWIN),
        scores_auc(S[same_sex[:, 0], same_sex[:, 1]], pair_scores(S, rel, Relation.UNRELATED)),
        matched_auc(S, rel, sex, age),
    )


if __name__ == "__main__":
    main()
