"""The drift decision on seeded samples: KS per column, Bonferroni, prediction drift."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from modelcycle.monitoring.drift import DriftSettings, TooFewCapturesError, compare

SETTINGS = DriftSettings(alpha=0.05, min_captures=30)


def _frame(n: int, seed: int, shift: dict[str, float] | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.normal(30, 5, n),
            "level": rng.normal(0, 1, n),
            "missing_share": np.zeros(n),  # constant on both sides: tested, never drifts
            "probability": rng.uniform(0, 1, n),
        }
    )
    for column, offset in (shift or {}).items():
        frame[column] += offset
    return frame


def test_an_unshifted_sample_does_not_drift() -> None:
    summary = compare("m", "1", _frame(500, 0), _frame(100, 1), ["probability"], SETTINGS)
    assert summary.status == "no_drift" and summary.drift_detected is False
    assert summary.drifted_share == 0 and summary.prediction_drift is False
    assert summary.threshold == pytest.approx(0.05 / 4)  # Bonferroni over the 4 columns
    assert (summary.n_reference, summary.n_current) == (500, 100)


def test_a_shifted_input_column_drifts_and_names_itself() -> None:
    current = _frame(100, 1, {"level": 0.8})
    summary = compare("m", "1", _frame(500, 0), current, ["probability"], SETTINGS)
    assert summary.drift_detected and summary.status == "drift"
    assert [f.name for f in summary.features if f.drifted] == ["level"]
    assert summary.drifted_share == pytest.approx(1 / 4)
    assert summary.prediction_drift is False
    assert "level" in summary.detail


def test_a_shifted_output_is_prediction_drift() -> None:
    current = _frame(100, 1, {"probability": 0.3})
    summary = compare("m", "1", _frame(500, 0), current, ["probability"], SETTINGS)
    assert summary.prediction_drift is True
    drifted = [f for f in summary.features if f.drifted]
    assert [(f.name, f.kind) for f in drifted] == [("probability", "output")]


def test_a_shifted_embedding_component_is_embedding_drift() -> None:
    reference, current = _frame(500, 0), _frame(100, 1)
    rng = np.random.default_rng(2)
    reference["embedding_distance"] = rng.normal(0, 1, 500)
    current["embedding_distance"] = rng.normal(0, 1, 100)
    quiet = compare("m", "1", reference, current, ["probability"], SETTINGS)
    assert quiet.embedding_drift is False and not quiet.drift_detected
    current["embedding_distance"] += 1.0
    summary = compare("m", "1", reference, current, ["probability"], SETTINGS)
    drifted = [(f.name, f.kind) for f in summary.features if f.drifted]
    assert drifted == [("embedding_distance", "embedding")]
    assert summary.embedding_drift is True and summary.prediction_drift is False
    # without embedding columns there is nothing to say about them
    assert compare("m", "1", _frame(500, 0), _frame(100, 1), [], SETTINGS).embedding_drift is None


def test_p_values_are_scipys_two_sample_ks() -> None:
    reference, current = _frame(300, 0), _frame(60, 1, {"age": 2.0})
    summary = compare("m", "1", reference, current, ["probability"], SETTINGS)
    for feature in summary.features:
        expected = ks_2samp(reference[feature.name], current[feature.name])
        assert feature.p_value == pytest.approx(expected.pvalue)
        assert feature.statistic == pytest.approx(expected.statistic)


def test_bonferroni_keeps_a_column_that_would_drift_alone() -> None:
    # p is between alpha/n and alpha: drifts at alpha, not after the correction
    reference, current = _frame(500, 0), _frame(100, 1, {"age": 1.0})
    p = ks_2samp(reference["age"], current["age"]).pvalue
    assert 0.05 / 4 < p < 0.05, p  # the seeded sample lands here; the assertion below needs it
    summary = compare("m", "1", reference, current, ["probability"], SETTINGS)
    assert not summary.drift_detected


def test_nan_values_are_left_out_and_an_empty_column_is_not_tested() -> None:
    reference, current = _frame(200, 0), _frame(50, 1)
    current.loc[:10, "age"] = np.nan
    current["level"] = np.nan
    summary = compare("m", "1", reference, current, ["probability"], SETTINGS)
    by_name = {f.name: f for f in summary.features}
    assert by_name["age"].p_value is not None
    assert by_name["level"].p_value is None and not by_name["level"].drifted
    assert summary.threshold == pytest.approx(0.05 / 3)


def test_a_reference_keeps_only_the_outputs_of_rows_the_model_never_trained_on() -> None:
    from modelcycle.monitoring.drift import reference_frame
    from modelcycle.serving.adapter import ServingAdapter

    class Level(ServingAdapter):
        request_type = None  # type: ignore[assignment]

        def decode(self, request: object) -> list[np.ndarray]:
            raise NotImplementedError

        def drift_features(self, inputs: list[np.ndarray]) -> dict[str, float]:
            return {"level": float(inputs[0][0, 0])}

        def examples(self, held_out: object, target: object) -> list[dict[str, object]]:
            return []

    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(100, 3))]
    # a model surer of the 60 rows it trained on (the last ones) than of any new one
    confidence = np.r_[rng.uniform(0.5, 0.9, 40), rng.uniform(0.95, 1.0, 60)]
    outputs = {"confidence": confidence[:, None]}
    frame = reference_frame(Level({}), inputs, outputs, unseen=40)
    assert frame["level"].notna().all() and len(frame) == 100  # inputs of every row
    assert frame["confidence"].notna().sum() == 40
    assert np.array_equal(frame["confidence"][:40], confidence[:40])
    assert np.isfinite(outputs["confidence"]).all()  # the caller's outputs are untouched
    new = pd.DataFrame({"level": rng.normal(size=50), "confidence": rng.uniform(0.5, 0.9, 50)})
    kept = compare("m", "1", frame, new, ["confidence"], SETTINGS)
    assert kept.status == "no_drift", kept.detail
    every = reference_frame(Level({}), inputs, outputs)  # the trained-on rows' outputs too
    assert compare("m", "1", every, new, ["confidence"], SETTINGS).prediction_drift


def test_too_few_captures_say_how_many_are_needed() -> None:
    with pytest.raises(TooFewCapturesError, match=r"12 captured requests, at least 30"):
        compare("m", "1", _frame(100, 0), _frame(12, 1), [], SETTINGS)


@pytest.mark.parametrize(("alpha", "minimum"), [(0.0, 30), (1.5, 30), (0.05, 1)])
def test_bad_settings_are_refused(alpha: float, minimum: int) -> None:
    with pytest.raises(ValueError, match=r"alpha|min_captures"):
        DriftSettings(alpha=alpha, min_captures=minimum)
