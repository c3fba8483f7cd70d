"""Serving twins: two people's FreeSurfer measures and covariates in, twin probability out."""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from modelcycle.data.features import ResidualStandardizer
from modelcycle.serving.adapter import SHARE, PlausibleRange, RequestError, ServingAdapter

# Strict: numbers only (an int is fine; "12" or true is not), never NaN or infinity, and
# within float32 range: the model takes float32, where a larger number becomes infinity.
FLOAT32_MAX = float(np.finfo(np.float32).max)
Finite = Annotated[float, Field(allow_inf_nan=False, strict=True, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
MAX_MISSING = 0.2  # the training cohort excluded subjects missing more than this share
#: What a pair model's answers mean: the answer schema's titles and descriptions, which
#: GET /v1/models, the OpenAPI document and the web page show.
PAIR_OUTPUTS: dict[str, dict[str, Any]] = {
    "probability": SHARE
    | {
        "title": "twin-like pair",
        "description": (
            "Probability that a and b are a twin-like pair (same family, same age) rather "
            "than unrelated, for a pair that is one or the other at even odds"
        ),
    },
    "similarity": {
        "type": "number",  # no bounds: float rounding may pass 1 by an ulp
        "title": "similarity",
        "description": (
            "Cosine similarity of the model's embeddings of a and b, from -1 to 1: the "
            "higher, the more alike their brains"
        ),
    },
}


class Person(BaseModel):
    """What every twins request says of each person besides the brain data."""

    model_config = ConfigDict(extra="forbid")

    age: Annotated[float, Field(gt=0, lt=120, allow_inf_nan=False, strict=True)]
    sex: Literal["M", "F"]
    acquisition: Literal[1, 2] = Field(1, description="T1w acquisition: 1 coronal, 2 sagittal")

    @field_validator("acquisition", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: Any) -> Any:
        """A code, not a flag: pydantic would take true for 1 (and false for 0, refused)."""
        if isinstance(value, bool):
            raise ValueError("give the acquisition as 1 (coronal) or 2 (sagittal), not true/false")
        return value

    def covariates(self) -> np.ndarray:
        """The model's covariate row (1, 3): age, male, sagittal acquisition."""
        row = [self.age, 1.0 if self.sex == "M" else 0.0, float(self.acquisition == 2)]
        return np.array([row], dtype=np.float32)


class Subject(Person):
    """One person: FreeSurfer 5.3 session-1 measures by name, age, sex, T1w acquisition."""

    measures: dict[str, Finite | None] = Field(
        description="Measure name → value; null or absent means missing (imputed)",
        max_length=2000,
    )


class PairRequest(BaseModel):
    """Are `a` and `b` twins?"""

    model_config = ConfigDict(extra="forbid")

    a: Subject
    b: Subject


class PairServing(ServingAdapter):
    """What every twins adapter shares: a request about two people, `a` and `b`.

    Model rows are a, a_covariates, b, b_covariates; a subclass says how one person's brain
    data becomes a row (`_subject`) and back (`_brain_data`). The held-out metric is the
    ROC-AUC of the probability, twin-like vs unrelated pairs.
    """

    held_out_metric_name = "ROC-AUC twin-like vs unrelated"
    request_parts = ("a", "b")

    def decode(self, request: BaseModel) -> list[np.ndarray]:
        """Rows a, a_covariates, b, b_covariates."""
        assert isinstance(request, self.request_type)
        a, a_cov = self._subject(request.a, "a")  # type: ignore[attr-defined]
        b, b_cov = self._subject(request.b, "b")  # type: ignore[attr-defined]
        return [a, a_cov, b, b_cov]

    @abstractmethod
    def _subject(self, subject: Any, key: str) -> tuple[np.ndarray, np.ndarray]:
        """One person's model row (1, F) and covariate row (1, 3); `key` names them in errors."""

    @abstractmethod
    def _brain_data(self, row: np.ndarray) -> dict[str, Any]:
        """The request fields of one person's brain data, from their model row."""

    def answer_schema(self, shapes: dict[str, list[Any]]) -> dict[str, Any]:
        """The default numbers, each said what it means (`PAIR_OUTPUTS`)."""
        schema = super().answer_schema(shapes)
        for name, number in schema["properties"].items():
            if number == {"type": "number"} and name in PAIR_OUTPUTS:
                schema["properties"][name] = PAIR_OUTPUTS[name]
        return schema

    def held_out_metric(self, outputs: dict[str, np.ndarray], target: np.ndarray | None) -> float:
        """ROC-AUC of the probability against the held-out pairs' labels."""
        from sklearn.metrics import roc_auc_score

        if target is None:
            raise ValueError("the held-out pairs have no labels; re-register the model.")
        return float(roc_auc_score(target, outputs["probability"].reshape(-1)))

    def examples(
        self, held_out: list[np.ndarray], target: np.ndarray | None
    ) -> list[dict[str, Any]]:
        """Two twin-like and two unrelated held-out pairs (their labels are known)."""
        labels = np.zeros(len(held_out[0])) if target is None else target
        picks = [*np.flatnonzero(labels == 1)[:2], *np.flatnonzero(labels == 0)[:2]]
        examples = []
        for n, i in enumerate(picks):
            kind = "twin-like pair" if labels[i] == 1 else "unrelated pair"
            request = self.request_of(held_out, i)
            parts = {k: person_summary(request[k]) for k in self.request_parts}
            examples.append(
                {
                    "id": f"example-{n + 1}",
                    "label": f"{kind} (held out)",
                    "request": request,
                    "parts": parts,
                }
            )
        return examples

    def request_of(self, inputs: list[np.ndarray], i: int) -> dict[str, Any]:
        """Row `i` of model inputs (a, a_covariates, b, b_covariates) as a request body."""
        return {
            "a": self._brain_data(inputs[0][i]) | person_fields(inputs[1][i]),
            "b": self._brain_data(inputs[2][i]) | person_fields(inputs[3][i]),
        }


def person_summary(person: dict[str, Any]) -> str:
    """A person in a few words, for choosing among examples: "F, 25 y"."""
    return f"{person['sex']}, {person['age']:.0f} y"


def person_fields(covariates: np.ndarray) -> dict[str, Any]:
    """A person's age, sex and acquisition request fields from their covariate row."""
    return {
        "age": float(covariates[0]),
        "sex": "M" if covariates[1] > 0.5 else "F",
        "acquisition": 2 if covariates[2] > 0.5 else 1,
    }


class TwinsServing(PairServing):
    """Adapter of the twins task; `info["features"]` lists the model's measure names.

    Robustness shifts act on both subjects' measures: a scanner/site offset (every measure
    times 1+s), the same offset of the cortical thickness measures only, measurement noise
    (Gaussian, s times each measure's sd over the rows shifted) and missing regions (a share s
    of each subject's measures absent).
    """

    request_type = PairRequest
    shift_sizes: ClassVar[dict[str, tuple[float, ...]]] = {
        "site offset": (0.02, 0.05, 0.1),
        "thickness offset": (0.02, 0.05, 0.1),
        "noise": (0.1, 0.25, 0.5),
        "missing": (0.05, 0.1, 0.2),
    }

    def __init__(self, info: dict[str, Any]) -> None:
        super().__init__(info)
        self.features: list[str] = list(info["features"])
        self.column = {name: i for i, name in enumerate(self.features)}
        fitted = info.get("standardizer")  # absent from models saved before drift features
        self.standardizer = None if fitted is None else ResidualStandardizer.from_dict(fitted)
        self.axes = np.asarray(info.get("principal_axes", np.zeros((0, len(self.features)))))
        self._plausible = (
            None
            if self.standardizer is None
            else PlausibleRange(self.standardizer.mean, self.standardizer.scale)
        )

    def _subject(self, subject: Subject, key: str) -> tuple[np.ndarray, np.ndarray]:
        measures = subject.measures
        # A null value becomes NaN (numpy converts None so when the dtype is float).
        values = np.array(list(measures.values()), dtype=np.float32)
        if list(measures) == self.features:
            # Every measure in the model's own order (as the examples list them): the values
            # are the row, no lookups (12 µs instead of 34 per person).
            row = values[None]
        else:
            unknown = sorted(measures.keys() - self.column.keys())
            if unknown:
                raise RequestError(
                    f"{key}.measures: {len(unknown)} unknown measure name(s), e.g. "
                    f"{unknown[:3]}; the model takes FreeSurfer 5.3 names such as "
                    f"{self.features[:2]} (the examples, GET /v1/models/NAME/examples, name "
                    f"all {len(self.features)})."
                )
            row = np.full((1, len(self.features)), np.nan, dtype=np.float32)
            columns = np.fromiter(map(self.column.__getitem__, measures), np.intp, len(measures))
            row[0, columns] = values
        missing = float(np.isnan(row).mean())
        if missing > MAX_MISSING:
            raise RequestError(
                f"{key}.measures: {missing:.0%} of the {len(self.features)} measures are missing; "
                f"at most {MAX_MISSING:.0%} can be imputed. Send more measures."
            )
        self._check_plausible(row[0], key)
        return row, subject.covariates()

    def _check_plausible(self, row: np.ndarray, key: str) -> None:
        """Refuse a measure beyond `OUTLIER_SD` training standard deviations (NaN passes)."""
        if self._plausible is not None:
            self._plausible.refuse_outside(
                row,
                lambda at: f"{key}.measures.{self.features[at[-1]]}",
                "cohort's",
                "no brain was seen: check the units and that each value is the named "
                "FreeSurfer 5.3 measure.",
            )

    def drift_features(self, inputs: list[np.ndarray]) -> dict[str, float]:
        """Per pair: age, male and missing shares, level, spread and principal components.

        Pair means, not one feature per subject: which subject comes first is not random (it
        tracks the scan period). Level and spread are the mean and standard deviation across
        measures of each subject's covariate-regressed z-scores (the model's own input), which
        a site or scanner offset moves even when raw measures stay plausible; `pc1`... are
        their projections on the training rows' leading principal axes, which a shift of a
        group of measures (one lobe, one kind of measure) moves while the level may not.
        """
        a, a_cov, b, b_cov = inputs
        features = {
            "age": float((a_cov[0, 0] + b_cov[0, 0]) / 2),
            "male_share": float((a_cov[0, 1] + b_cov[0, 1]) / 2),
            "missing_share": float((np.isnan(a).mean() + np.isnan(b).mean()) / 2),
        }
        if self.standardizer is not None:
            z = self.standardizer.transform(np.concatenate((a, b)), np.concatenate((a_cov, b_cov)))
            features["level"] = float(z.mean(axis=1).mean())
            features["spread"] = float(z.std(axis=1).mean())
            for k, value in enumerate((z @ self.axes.T).mean(axis=0)):
                features[f"pc{k + 1}"] = float(value)
        return features

    def shift(
        self, inputs: list[np.ndarray], kind: str, size: float, seed: int
    ) -> list[np.ndarray]:
        """The pairs' rows (a, a_covariates, b, b_covariates) with both subjects shifted."""
        self.check_shift(kind)
        thick = np.array(["thick" in name.lower() for name in self.features], dtype=bool)
        sd = np.nanstd(np.concatenate([inputs[0], inputs[2]]), axis=0)
        return shift_pairs(inputs, kind, size, sd, thick, seed)

    def _brain_data(self, row: np.ndarray) -> dict[str, Any]:
        """Measures by name; a missing one (NaN) is null."""
        return {
            "measures": {
                name: (None if math.isnan(v) else round(float(v), 4))
                for name, v in zip(self.features, row, strict=True)
            }
        }


def shift_pairs(
    inputs: list[np.ndarray],
    kind: str,
    size: float,
    sd: np.ndarray,
    thick: np.ndarray,
    seed: int,
) -> list[np.ndarray]:
    """Pairs' rows with one shift applied to both subjects' measures (covariates unchanged).

    Args:
        inputs: a, a_covariates, b, b_covariates (measures are rows x measures).
        kind: "site offset", "thickness offset", "noise" or "missing".
        size: Relative offset, noise in sds, or share of measures missing.
        sd: Each measure's sd (noise scale).
        thick: Boolean mask of the cortical thickness measures.
        seed: Seeds the noise and the missing measures.
    """
    rng = np.random.default_rng(seed)
    a, a_cov, b, b_cov = (np.array(x, copy=True) for x in inputs)
    for X in (a, b):
        if kind == "site offset":
            X *= 1 + size
        elif kind == "thickness offset":  # one kind of measure only (cortical thickness)
            X[:, thick] *= 1 + size
        elif kind == "noise":
            X += rng.normal(0, 1, X.shape).astype(X.dtype) * size * sd.astype(X.dtype)
        elif kind == "missing":
            X[rng.random(X.shape) < size] = np.nan
        else:
            raise ValueError(f"unknown shift {kind!r}")
    return [a, a_cov, b, b_cov]
