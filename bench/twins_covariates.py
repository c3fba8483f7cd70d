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

With `--report`, a twins run's report folder (`modelcycle pipeline twins`), it adds a row for
that run's model: each fold's best checkpoint over the fold's test subjects. The folds and
seed are then the run's, and the model's and the baseline's rows must reproduce the AUCs the
run recorded.

    python bench/twins_covariates.py --data ../shared/data/qtim [--folds 5] [--seed 42]
                                     [--report .modelcycle/reports/twins-TIME]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from torch import nn

from modelcycle.config import assemble
from modelcycle.data.features import ResidualStandardizer
from modelcycle.data.qtim import QTIMSource
from modelcycle.data.relations import Relation, opposite_sex, pairs_of
from modelcycle.evaluation.kinship import matched_auc, pair_auc, pair_scores, scores_auc
from modelcycle.tasks.base import Fold
from modelcycle.tasks.twins import TwinsData, TwinsTask
from modelcycle.training import restore

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("vs unrelated", "same sex vs unrelated", "same sex vs matched")
TASK_BASELINE = "baseline (regressed, the task's)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/qtim")
    parser.add_argument("--folds", type=int, default=None, help="default 5, or the report's")
    parser.add_argument("--seed", type=int, default=None, help="default 42, or the report's")
    parser.add_argument("--report", type=Path, default=None, help="a twins run's report folder")
    args = parser.parse_args()
    if not (args.data / "participants.tsv").is_file():
        parser.error(
            f"--data {args.data}: no participants.tsv there; give a copy of QTIM (ds004169) "
            "holding it and the FreeSurfer tables, e.g. ../shared/data/qtim"
        )
    run = Run.read(args.report, parser.error) if args.report is not None else None
    for name, default in (("folds", 5), ("seed", 42)):
        given, ran = getattr(args, name), getattr(run, name, None)
        if given is not None and ran is not None and given != ran:
            parser.error(f"--{name} {given}: the report's run used {ran}; leave it out")
        setattr(args, name, next(v for v in (given, ran, default) if v is not None))
    if args.folds < 2:
        parser.error(f"--folds {args.folds}: give at least 2")
    cohort = QTIMSource(root=args.data).load()
    if run is not None and run.data_hash != cohort.data_hash:
        parser.error(f"--report {args.report}: its run read other data than --data {args.data}")
    data = TwinsData.from_cohort(cohort)
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
        TASK_BASELINE: correlation(data.covariates),
        "baseline without regression": correlation(np.empty((len(data.X), 0))),
    }
    print(f"{len(data.X)} subjects, {args.folds} family-grouped folds, seed {args.seed}")
    print(f"{'similarity':34s}" + "".join(f"  {c:>22s}" for c in COLUMNS))
    rows = {
        name: [_aucs(similarity(f), data, f.test) for f in folds]
        for name, similarity in similarities.items()
    }
    if run is not None:
        rows["the run's model"] = [_aucs(run.similarity(data, f), data, f.test) for f in folds]
        # Both rows must give the run's own numbers: same folds, same checkpoints, same data.
        for row, scorer in (("the run's model", "model"), (TASK_BASELINE, "baseline")):
            ours = [[r[0], r[2]] for r in rows[row]]
            theirs = [run.recorded(f.index, scorer) for f in folds]
            np.testing.assert_allclose(ours, theirs, atol=1e-6, err_msg=f"{row} vs the run")
    for name, per_fold in rows.items():
        scores = np.array(per_fold)
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


@dataclass(frozen=True)
class Run:
    """A twins run's report folder: its config, its metrics and its fold checkpoints."""

    folder: Path
    folds: int
    seed: int
    data_hash: str
    summary: dict[str, Any]
    task: TwinsTask

    @classmethod
    def read(cls, folder: Path, error: Callable[[str], Any]) -> Run:
        """The report in `folder`; `error(message)` when it is not a twins run's."""
        try:
            summary = json.loads((folder / "summary.json").read_text())
            config = OmegaConf.load(folder / "config.yaml")
        except (OSError, ValueError) as err:
            error(f"--report {folder}: not a run's report folder ({err})")
            raise
        if summary.get("task") != "twins" or not isinstance(config, DictConfig):
            error(f"--report {folder}: a {summary.get('task')!r} run; give a twins run's")
            raise SystemExit(2)
        task = assemble(config).task
        assert isinstance(task, TwinsTask)
        return cls(
            folder,
            int(config.cv.n_folds),
            int(config.seed),
            str(summary["data"]["hash"]),
            summary,
            task,
        )

    def similarity(self, data: TwinsData, fold: Fold) -> np.ndarray:
        """The run's model of `fold`, from its best checkpoint, over the fold's test rows."""
        checkpoint = self.folder / "checkpoints" / f"fold{fold.index}" / "best.ckpt"
        if not checkpoint.is_file():
            raise SystemExit(f"{checkpoint}: missing; the run's checkpoints are needed")
        module = restore(self.task.model(data, fold), checkpoint)
        return self.task.similarity(module, data, fold)

    def recorded(self, fold: int, scorer: str) -> list[float]:
        """The run's own AUCs of `fold`, vs unrelated and vs matched, for a row's check."""
        metrics = self.summary["folds"][fold][scorer]
        return [metrics["auc_twin_vs_unrelated"], metrics["auc_twin_vs_matched"]]


if __name__ == "__main__":
    main()
