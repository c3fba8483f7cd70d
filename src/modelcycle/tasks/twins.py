"""Twins from structural MRI: is this pair of people twins, siblings, or unrelated?

Data: QTIM participants and FreeSurfer ses-01 measures (`modelcycle.data.qtim`). Model: a
siamese encoder (MLP or region graph) trained on twin-like vs unrelated pairs. Baseline:
Pearson correlation of the same processed feature vectors, scored on the same folds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import lightning as L
import numpy as np
import torch
from torch import nn

from modelcycle.data.features import ResidualStandardizer
from modelcycle.data.pair_loader import PairDataModule
from modelcycle.data.qtim import Cohort, QTIMSource
from modelcycle.data.qtim_functional import FunctionalSource
from modelcycle.data.relations import Relation, pairs_of, relation_matrix, sample_unrelated
from modelcycle.data.splits import group_holdout, group_kfold
from modelcycle.data.tables import DataError
from modelcycle.embedding_columns import EMBEDDING
from modelcycle.evaluation.kinship import score_similarity
from modelcycle.evaluation.kinship_plots import plot_kinship
from modelcycle.models.encoders import FeatureSpace
from modelcycle.models.inference import evaluating
from modelcycle.models.pair_scoring import RawPairScorer
from modelcycle.models.siamese import OBJECTIVES, SiamesePairModel
from modelcycle.servable import ServableModel
from modelcycle.serving.adapter import ServingAdapter
from modelcycle.tasks.base import (
    DataSummary,
    Evaluation,
    Fold,
    Task,
    check_settings,
    register_task,
)
from modelcycle.tasks.twins_serving import TwinsServing

FINAL = -1  # index of the final (deployable) fit, apart from the CV folds


class CohortSource(Protocol):
    """Anything that loads a `Cohort`: QTIM's FreeSurfer tables, or connectomes."""

    def load(self) -> Cohort:
        """Read and validate the cohort."""
        ...


@dataclass(frozen=True)
class TwinsData:
    """The cohort as arrays, rows aligned with `cohort.subjects`."""

    cohort: Cohort
    X: np.ndarray  # (n_subjects, n_measures), NaN where missing
    covariates: np.ndarray  # (n_subjects, 3): age, sex, acquisition
    relations: np.ndarray  # (n_subjects, n_subjects) `Relation` values
    families: np.ndarray
    sex: np.ndarray

    @classmethod
    def from_cohort(cls, cohort: Cohort) -> TwinsData:
        """Arrays of a loaded cohort."""
        s = cohort.subjects
        return cls(
            cohort=cohort,
            X=cohort.measures.to_numpy(float),
            covariates=cohort.covariates(),
            relations=relation_matrix(s["family_id"].to_numpy(), s["age"].to_numpy()),
            families=s["family_id"].to_numpy(),
            sex=s["sex"].to_numpy(),
        )


@register_task("twins")
class TwinsTask(Task[TwinsData]):
    """Siamese twin detection on FreeSurfer measures, with a correlation baseline.

    Args:
        source: Where QTIM comes from.
        encoder: Builds the encoder from a `FeatureSpace` (a partial from the model config).
        objective: "bce", "contrastive" or "infonce".
        lr: Learning rate.
        weight_decay: Weight decay.
        margin: Contrastive margin (cosine distance).
        temperature: InfoNCE temperature.
        negatives_per_positive: Unrelated training pairs drawn per twin-like pair.
        val_fraction: Share of training families held out for early stopping.
        batch_size: Pairs per batch.
    """

    serving: ClassVar[type[ServingAdapter]] = TwinsServing
    primary_metric = "auc_twin_vs_unrelated"
    unit = "subjects"
    data_sources: ClassVar[tuple[type, ...]] = (QTIMSource, FunctionalSource)
    summary_metrics: ClassVar[tuple[str, ...]] = (
        "auc_twin_vs_unrelated",
        "auc_twin_vs_matched",
        "auc_sibling_vs_unrelated",
        "top1",
        "top5",
    )
    min_folds = 2  # family-grouped k-fold: a test part needs a training part beside it
    #: Checked when the config is assembled, before the data is read.
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"objective": tuple(OBJECTIVES)}

    def __init__(
        self,
        source: CohortSource,
        encoder: Callable[..., nn.Module],
        objective: str = "infonce",
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        margin: float = 1.0,
        temperature: float = 0.1,
        negatives_per_positive: int = 4,
        val_fraction: float = 0.15,
        batch_size: int = 128,
    ) -> None:
        check_settings(
            positive={"lr": lr, "temperature": temperature},
            whole={"negatives_per_positive": negatives_per_positive, "batch_size": batch_size},
            shares={"val_fraction": val_fraction},
            non_negative={"weight_decay": weight_decay, "margin": margin},
        )
        self.source, self.encoder = source, encoder
        self.objective, self.lr, self.weight_decay = objective, lr, weight_decay
        self.margin, self.temperature = margin, temperature
        self.negatives_per_positive = negatives_per_positive
        self.val_fraction, self.batch_size = val_fraction, batch_size
        self._processed: dict[int, np.ndarray] = {}

    def load(self) -> tuple[TwinsData, DataSummary]:
        """Read QTIM and count subjects, families, relations and exclusions."""
        cohort = self.source.load()
        data = TwinsData.from_cohort(cohort)
        counts = {
            "subjects": len(cohort),
            "measures": cohort.measures.shape[1],
            "families": len(np.unique(data.families)),
            "twin_like_pairs": len(pairs_of(data.relations, Relation.TWIN)),
            "sibling_pairs": len(pairs_of(data.relations, Relation.SIBLING)),
        }
        notes = [f"excluded {len(v)}: {k}" for k, v in cohort.exclusions.items()]
        return data, DataSummary(cohort.data_hash, counts, notes)

    def folds(self, data: TwinsData, n_folds: int, seed: int) -> list[Fold]:
        """Family-grouped k-fold, validation families carved from each training part.

        The carving is stratified so that families with twins reach validation in proportion.
        """
        parts = group_kfold(data.families, n_folds, seed)
        has_twin = (data.relations == Relation.TWIN).any(axis=1).astype(int)
        folds = []
        for k, test in enumerate(parts):
            rest = np.setdiff1d(np.arange(len(data.families)), test)
            train, val = group_holdout(
                data.families, rest, self.val_fraction, seed + k, strata=has_twin
            )
            _check_twins(data, train, f"fold {k}")
            folds.append(Fold(k, train, val, test))
        self._processed.clear()
        return folds

    def final_fold(self, data: TwinsData, seed: int) -> Fold:
        """Every family trains but the validation families (stratified as in `folds`)."""
        has_twin = (data.relations == Relation.TWIN).any(axis=1).astype(int)
        everyone = np.arange(len(data.families))
        train, val = group_holdout(data.families, everyone, self.val_fraction, seed, has_twin)
        _check_twins(data, train, "the final fit")
        self._processed.pop(FINAL, None)
        return Fold(FINAL, train, val, np.array([], dtype=int))

    def standardizer(self, data: TwinsData, fold: Fold) -> ResidualStandardizer:
        """Imputation, z-scores and covariate regression fitted on `fold.train` only."""
        return ResidualStandardizer.fit(data.X[fold.train], data.covariates[fold.train])

    def processed(self, data: TwinsData, fold: Fold) -> np.ndarray:
        """All subjects' features, processed with the fold's training fit (cached per fold)."""
        if fold.index not in self._processed:
            fitted = self.standardizer(data, fold)
            self._processed[fold.index] = fitted.transform(data.X, data.covariates)
        return self._processed[fold.index]

    def datamodule(self, data: TwinsData, fold: Fold, seed: int) -> L.LightningDataModule:
        """Twin-like pairs + sampled unrelated pairs from training; all pairs from validation."""
        X = self.processed(data, fold)
        train = _labelled_pairs(data.relations, fold.train, self.negatives_per_positive, seed)
        val = _labelled_pairs(data.relations, fold.val, None, seed)
        return PairDataModule(X, train, val, batch_size=self.batch_size, seed=seed)

    def feature_space(self, data: TwinsData, fold: Fold) -> FeatureSpace:
        """What the encoder may know of its inputs: names and the fold's processed training rows."""
        X = self.processed(data, fold)
        return FeatureSpace(list(data.cohort.measures.columns), X[fold.train])

    def model(self, data: TwinsData, fold: Fold) -> L.LightningModule:
        """A fresh siamese model whose encoder sees the fold's processed training rows."""
        encoder = self.encoder(space=self.feature_space(data, fold))
        return SiamesePairModel(
            encoder, self.objective, self.lr, self.weight_decay, self.margin, self.temperature
        )

    def baseline(self, data: TwinsData, fold: Fold) -> Evaluation:
        """Pearson correlation between processed feature vectors of test subjects."""
        test = fold.test
        return self.score(np.corrcoef(self.processed(data, fold)[test]), data, test)

    def evaluate(self, module: L.LightningModule, data: TwinsData, fold: Fold) -> Evaluation:
        """Cosine similarity of the model's embeddings of test subjects."""
        return self.score(self.similarity(module, data, fold), data, fold.test)

    def similarity(self, module: L.LightningModule, data: TwinsData, fold: Fold) -> np.ndarray:
        """The model's cosine similarities of the test subjects, rows as `fold.test`."""
        assert isinstance(module, SiamesePairModel)
        X = torch.as_tensor(self.processed(data, fold)[fold.test], dtype=torch.float32)
        module.eval()
        with torch.no_grad():
            E = module.embed(X).numpy()
        return np.asarray(E @ E.T)

    def score(self, S: np.ndarray, data: TwinsData, rows: np.ndarray) -> Evaluation:
        """Kinship metrics of a similarity matrix `S` over `rows` (model and baseline alike)."""
        relations, sex = data.relations[np.ix_(rows, rows)], data.sex[rows]
        return score_similarity(S, relations, sex, data.covariates[rows, 0])

    def servable(self, module: L.LightningModule, data: TwinsData, fold: Fold) -> ServableModel:
        """Raw measures + covariates of two people in, probability and similarity out.

        Held-out inputs are the validation families' twin-like pairs and as many unrelated
        pairs: rows that never trained the model. The pair head is calibrated on them first
        (`CosinePairHead.calibrate`), so the probability is that of a twin-like pair at even
        odds. The drift reference is drawn the same way from every family the model saw,
        the validation families' pairs first: the held-out pairs alone are too few to tell
        a shift in the measures from chance, and only pairs that never trained the encoder
        give the reference its outputs (`ServableModel.reference_unseen`).
        """
        assert isinstance(module, SiamesePairModel)
        pairs, labels = _labelled_pairs(data.relations, fold.val, 1, seed=0)
        X_val = torch.as_tensor(self.processed(data, fold), dtype=torch.float32)
        with evaluating(module):
            cos = module.similarity(X_val[pairs[:, 0]], X_val[pairs[:, 1]])
        module.head.calibrate(cos, torch.as_tensor(labels))
        unseen, _ = _labelled_pairs(data.relations, fold.val, 1, seed=1)
        trained, _ = _labelled_pairs(data.relations, fold.train, 1, seed=1)
        reference = np.concatenate([unseen, trained])
        X, C = data.X.astype(np.float32), data.covariates.astype(np.float32)
        standardizer = self.standardizer(data, fold)

        def inputs(rows: np.ndarray) -> list[np.ndarray]:
            a, b = rows[:, 0], rows[:, 1]
            return [X[a], C[a], X[b], C[b]]

        return ServableModel(
            task=self.name,
            module=RawPairScorer(module, standardizer),
            input_names=["a", "a_covariates", "b", "b_covariates"],
            output_names=["probability", "similarity", EMBEDDING],
            held_out=inputs(pairs),
            info={
                "features": list(data.cohort.measures.columns),
                "covariates": ["age (years)", "sex (M=1, F=0)", "T1w acquisition (sagittal=1)"],
                "standardizer": standardizer.to_dict(),
                "principal_axes": _principal_axes(
                    standardizer.transform(data.X[fold.train], data.covariates[fold.train])
                ).tolist(),
            },
            target=labels.astype(np.float32),
            reference=inputs(reference),
            reference_unseen=len(unseen),
        )

    def reference(self, data: TwinsData) -> dict[str, float]:
        """The baseline over the whole cohort (processing fitted on everyone), for orientation."""
        fitted = ResidualStandardizer.fit(data.X, data.covariates)
        S = np.corrcoef(fitted.transform(data.X, data.covariates))
        return score_similarity(S, data.relations, data.sex, data.covariates[:, 0]).metrics

    def plot(self, model: Evaluation, baseline: Evaluation, out_dir: Path, tag: str) -> list[Path]:
        """ROC curves, similarity histograms per relation and co-twin retrieval curves."""
        return plot_kinship({"model": model, "baseline": baseline}, out_dir, tag)


def _principal_axes(Z: np.ndarray, k: int = 3) -> np.ndarray:
    """The `k` leading principal axes (k, n_features) of processed training rows `Z`."""
    _, _, vt = np.linalg.svd(Z - Z.mean(axis=0), full_matrices=False)
    return vt[:k]


def _check_twins(data: TwinsData, train: np.ndarray, part: str) -> None:
    """Refuse a training part with no twin pair: training contrasts twins with unrelated pairs.

    Raises:
        DataError: Naming the part (a fold or the final fit) and the fix, before any training.
    """
    if not (data.relations[np.ix_(train, train)] == Relation.TWIN).any():
        families = len(np.unique(data.families[train]))
        raise DataError(
            f"The training part of {part} ({families} families) holds no twin pairs, and "
            "training needs them (each batch contrasts twin with unrelated pairs): give a "
            "cohort with more twin families (data.families), or fewer folds (cv.n_folds)."
        )


def _labelled_pairs(
    relations: np.ndarray, rows: np.ndarray, negatives_per_positive: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Twin-like pairs (label 1) and unrelated pairs (label 0) among `rows`, in global indices.

    With `negatives_per_positive=None` every unrelated pair is kept (for validation).
    """
    sub = relations[np.ix_(rows, rows)]
    positives = pairs_of(sub, Relation.TWIN)
    if negatives_per_positive is None:
        negatives = pairs_of(sub, Relation.UNRELATED)
    else:
        negatives = sample_unrelated(sub, negatives_per_positive * len(positives), seed)
    pairs = rows[np.concatenate([positives, negatives])]
    labels = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
    return pairs, labels
