"""Twins from resting-state fMRI: connectome graphs of two people → are they twins?

Data: one rest run per subject → parcel series → connectome (`modelcycle.data.qtim_functional`).
Everything else is the structural twins task's, reused: the same relations from family and
age, family-grouped folds, processing fitted on training rows (z-scored edges with age, sex
and acquisition regressed out), pairs and objectives, the correlation baseline on the same
folds, and kinship scoring. The encoder is a dense graph network over the connectome. When
the cohort carries hidden zygosity (the synthetic one does), results are also reported for
monozygotic and dizygotic pairs apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
from torch import nn

from modelcycle.data.features import ResidualStandardizer
from modelcycle.data.qtim_functional import FunctionalSource
from modelcycle.data.relations import Relation
from modelcycle.evaluation.kinship import pair_auc, pair_scores
from modelcycle.models.connectome_gnn import n_nodes_of
from modelcycle.models.encoders import FeatureSpace
from modelcycle.servable import ServableModel
from modelcycle.tasks.base import DataSummary, Evaluation, Fold, register_task
from modelcycle.tasks.twins import TwinsData, TwinsTask
from modelcycle.tasks.twins_functional_serving import FunctionalServing

#: Hidden relations of the synthetic cohort's truth file, scored against unrelated pairs.
HIDDEN = {"MZ": "auc_mz_vs_unrelated", "DZ": "auc_dz_vs_unrelated"}


@dataclass(frozen=True)
class FunctionalData(TwinsData):
    """The structural task's arrays over connectome edges, plus hidden kinship if known."""

    hidden: dict[str, np.ndarray]  # relation → (n, n) bool, pairs with that hidden relation
    parcels: list[str]
    retest_rows: np.ndarray  # rows with a rest run from a second session
    retest_edges: np.ndarray  # (len(retest_rows), n_edges) edges of that second run


@register_task("twins_functional")
class TwinsFunctionalTask(TwinsTask):
    """Siamese twin detection on resting-state connectomes, with a correlation baseline.

    Args:
        source: Where the connectomes come from.
        encoder: Builds the graph encoder from a `FeatureSpace` (a partial from model config).
        **kwargs: The structural task's training settings (objective, lr, ...).
    """

    data_sources = (FunctionalSource,)
    serving = FunctionalServing
    summary_metrics = (
        "auc_twin_vs_unrelated",
        "auc_twin_vs_matched",
        "auc_mz_vs_unrelated",
        "auc_dz_vs_unrelated",
        "auc_sibling_vs_unrelated",
        "top1",
        "top5",
    )

    def __init__(
        self,
        source: FunctionalSource,
        encoder: Callable[..., nn.Module],
        regress_covariates: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(source, encoder, **kwargs)
        self.functional = source
        self.regress_covariates = regress_covariates

    def standardizer(self, data: TwinsData, fold: Fold) -> ResidualStandardizer:
        """Edge z-scores fitted on `fold.train`; covariates regressed out only on request.

        Twins share age and sex exactly, so a covariate fit on a few dozen training subjects,
        noise on most of the hundreds of edges, would add the same offset to both members of a pair
        and pass for similarity (it lifts fold AUCs well above the whole-cohort figure).
        """
        fitted = super().standardizer(data, fold)
        if self.regress_covariates:
            return fitted
        return replace(
            fitted,
            beta=np.zeros_like(fitted.beta),
            residual_scale=np.ones_like(fitted.residual_scale),
        )

    def feature_space(self, data: TwinsData, fold: Fold) -> FeatureSpace:
        """The structural task's, plus how processed edges map back to correlations.

        With covariates regressed out, the mapping leaves out their (small) fitted offset.
        """
        fitted = self.standardizer(data, fold)
        return replace(
            super().feature_space(data, fold),
            offset=fitted.mean,
            scale=fitted.scale * fitted.residual_scale,
        )

    def load(self) -> tuple[FunctionalData, DataSummary]:
        """Prepare connectomes, then the structural task's arrays and counts."""
        base, summary = super().load()
        ids = list(base.cohort.subjects.index)
        hidden = hidden_relations(self.functional.kinship(), ids)
        retest = self.functional.retest(ids)
        data = FunctionalData(
            **{k: getattr(base, k) for k in TwinsData.__dataclass_fields__},
            hidden=hidden,
            parcels=parcels_of(list(base.cohort.measures.columns)),
            retest_rows=np.array([ids.index(s) for s in retest.index], dtype=int),
            retest_edges=retest.to_numpy(float),
        )
        counts = {**summary.counts, **{f"{k}_pairs": int(v.sum() // 2) for k, v in hidden.items()}}
        counts["retest_subjects"] = len(retest)
        return data, DataSummary(summary.data_hash, counts, summary.notes)

    def reference(self, data: TwinsData) -> dict[str, float]:
        """The baseline over the whole cohort, with hidden relations, for orientation."""
        everyone = np.arange(len(data.families))
        fitted = self.standardizer(data, Fold(-2, everyone, everyone, everyone))
        S = np.corrcoef(fitted.transform(data.X, data.covariates))
        metrics = self.score(S, data, everyone).metrics
        if isinstance(data, FunctionalData) and len(data.retest_rows) >= 2:
            rows = data.retest_rows
            first = fitted.transform(data.X[rows], data.covariates[rows])
            second = fitted.transform(data.retest_edges, data.covariates[rows])
            metrics["retest_top1"] = retest_identification(first, second)
        return metrics

    def servable(self, module: L.LightningModule, data: TwinsData, fold: Fold) -> ServableModel:
        """Two people's connectomes (+ age, sex) in, twin probability and similarity out."""
        servable = super().servable(module, data, fold)
        parcels = data.parcels if isinstance(data, FunctionalData) else []
        servable.info = {
            "parcels": parcels,
            "kind": self.functional.kind,
            "atlas": self.functional.atlas,
            "covariates": servable.info["covariates"],
        }
        return servable

    def score(self, S: np.ndarray, data: TwinsData, rows: np.ndarray) -> Evaluation:
        """The structural task's kinship metrics plus those of the hidden relations."""
        evaluation = super().score(S, data, rows)
        if isinstance(data, FunctionalData):
            metrics, scores = _hidden_metrics(S, data, rows)
            evaluation.metrics.update(metrics)
            evaluation.details["scores"].update(scores)
        else:
            evaluation.metrics.update({m: float("nan") for m in HIDDEN.values()})
        return evaluation


def retest_identification(first: np.ndarray, second: np.ndarray) -> float:
    """Share of subjects whose second-session connectome is closest to their own first one.

    Rows of `first` and `second` are the same people; similarity is Pearson correlation.
    """
    n = len(first)
    S = np.corrcoef(first, second)[:n, n:]  # (n, n): first-session rows × second-session
    return float((S.argmax(axis=1) == np.arange(n)).mean())


def parcels_of(edges: list[str]) -> list[str]:
    """Parcel names in atlas order from upper-triangle edge names `a~b` (row-major)."""
    n = n_nodes_of(len(edges))
    first_row = [e.split("~", 1) for e in edges[: n - 1]]
    return [first_row[0][0], *(b for _, b in first_row)]


def hidden_relations(truth: pd.DataFrame | None, subjects: list[str]) -> dict[str, np.ndarray]:
    """For MZ and DZ, the (n, n) mask of pairs with that hidden relation (empty when unknown)."""
    index = {s: i for i, s in enumerate(subjects)}
    masks = {k: np.zeros((len(subjects), len(subjects)), dtype=bool) for k in HIDDEN}
    if truth is None:
        return masks
    for a, b, relation in truth[["participant_a", "participant_b", "relation"]].itertuples(
        index=False
    ):
        if relation in masks and a in index and b in index:
            masks[relation][index[a], index[b]] = masks[relation][index[b], index[a]] = True
    return masks


def _hidden_metrics(
    S: np.ndarray, data: FunctionalData, rows: np.ndarray
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """AUC vs unrelated and similarities of each hidden relation among `rows`."""
    rel = data.relations[np.ix_(rows, rows)]
    metrics, scores = {}, {}
    for name, metric in HIDDEN.items():
        mask = data.hidden[name][np.ix_(rows, rows)]
        # Only this hidden relation stays TWIN; other related pairs leave the comparison.
        only = np.where((rel == Relation.UNRELATED) | (rel == Relation.SELF), rel, Relation.SELF)
        only[mask] = Relation.TWIN
        metrics[metric] = pair_auc(S, only, Relation.TWIN)
        scores[f"hidden {name}"] = pair_scores(S, only, Relation.TWIN)
    return metrics, scores
