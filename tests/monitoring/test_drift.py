"""The drift decision on seeded samples: KS per column, Bonferroni, prediction drift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from modelcycle.monitoring.drift import DriftSettings, TooFewCapturesError, compare
from modelcycle.serving.adapter import ServingAdapter

SETTINGS = DriftSettings(alpha=0.05, min_captures=30)


class Level(ServingAdapter):
    """An adapter whose one drift feature is a request's first value."""

    request_type = None  # type: ignore[assignment]

    def decode(self, request: object) -> list[np.ndarray]:
        raise NotImplementedError

    def drift_features(self, inputs: list[np.ndarray]) -> dict[str, float]:
        return {"level": float(inputs[0][0, 0])}

    def examples(self, held_out: object, target: object) -> list[dict[str, object]]:
        return []


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


def _classes(n: int, seed: int, mix: list[float]) -> np.ndarray:
    """`n` rows of class probabilities whose predicted classes follow `mix`, with a first
    class probability of the same spread whatever the mix."""
    rng = np.random.default_rng(seed)
    top = rng.choice(len(mix), n, p=mix)
    probabilities = rng.dirichlet(np.ones(len(mix)), n) * 0.2
    probabilities[:, 0] = rng.uniform(0.0, 0.2, n)
    probabilities[np.arange(n), top] = rng.uniform(0.5, 0.9, n)
    return probabilities


def test_a_shift_of_the_class_mix_is_prediction_drift_the_first_class_misses() -> None:
    # The probabilities column is the first class's probability: when requests moved from
    # one class to another, neither the first, its p-value was 0.21 and nothing drifted.
    from modelcycle.embedding_columns import answer_columns

    mix = [0.2, 0.5, 0.3]
    reference = [answer_columns({"probabilities": p[None]}, ["probabilities"]) for p in
                 _classes(400, 0, mix)]  # fmt: skip
    same = [answer_columns({"probabilities": p[None]}, ["probabilities"]) for p in
            _classes(60, 1, mix)]  # fmt: skip
    moved = [answer_columns({"probabilities": p[None]}, ["probabilities"]) for p in
             _classes(60, 1, [0.2, 0.1, 0.7])]  # fmt: skip
    assert set(moved[0]) == {"probabilities", "probabilities_argmax"}
    frames = [pd.DataFrame(rows) for rows in (reference, same, moved)]
    quiet = compare("m", "1", frames[0], frames[1], ["probabilities"], SETTINGS)
    assert quiet.status == "no_drift", quiet.detail
    summary = compare("m", "1", frames[0], frames[2], ["probabilities"], SETTINGS)
    by_name = {f.name: f for f in summary.features}
    assert not by_name["probabilities"].drifted  # the first class's share did not move
    shifted = by_name["probabilities_argmax"]
    assert shifted.drifted and shifted.kind == "output" and summary.prediction_drift
    assert shifted.reference_mean is None  # a mean class index says nothing
    assert shifted.statistic is not None and shifted.statistic > 0


def test_the_class_mix_p_value_is_calibrated_repeatable_and_resolves_the_threshold() -> None:
    from modelcycle.monitoring.drift import MIN_PERMUTATIONS, class_mix_test

    rng = np.random.default_rng(3)
    mix = rng.dirichlet(np.ones(10))  # 10 classes, a few dozen requests: sparse counts
    p_values = np.array(
        [
            class_mix_test(rng.choice(10, 200, p=mix) * 1.0, rng.choice(10, 40, p=mix) * 1.0, 0.05)
            for _ in range(500)
        ]
    )[:, 1]
    # a false alarm 5 % of the time (500 draws: 0.03-0.07 is two standard errors either side)
    assert 0.03 <= np.mean(p_values < 0.05) <= 0.07
    assert 0.4 <= np.mean(p_values < 0.5) <= 0.6
    reference, current = rng.choice(10, 400, p=mix) * 1.0, np.full(40, 3.0)
    first = class_mix_test(reference, current, 0.05)
    assert first == class_mix_test(reference, current, 0.05)  # seeded relabellings
    assert first[1] == pytest.approx(1 / (MIN_PERMUTATIONS + 1))  # none reached it
    # a threshold below what 999 relabellings resolve gets more of them
    assert class_mix_test(reference, current, 1e-4)[1] < 1e-4
    assert np.isnan(class_mix_test(reference, np.array([2.0, np.nan]), 0.05)[1])
    assert class_mix_test(np.full(20, 1.0), np.full(5, 1.0), 0.05) == (0.0, 1.0)


def test_a_reference_gives_the_predicted_class_of_rows_it_keeps_outputs_of() -> None:
    from modelcycle.embedding_columns import answer_columns
    from modelcycle.monitoring.drift import reference_frame

    probabilities = _classes(30, 0, [0.3, 0.3, 0.4])
    inputs = [np.zeros((30, 1))]
    frame = reference_frame(Level({}), inputs, {"probabilities": probabilities}, unseen=20)
    served = [answer_columns({"probabilities": p[None]}, ["probabilities"]) for p in
              probabilities[:20]]  # fmt: skip
    assert list(frame["probabilities_argmax"][:20]) == [r["probabilities_argmax"] for r in served]
    assert frame["probabilities_argmax"][20:].isna().all()


def test_too_few_captures_say_how_many_are_needed() -> None:
    with pytest.raises(TooFewCapturesError, match=r"12 captured requests, at least 30"):
        compare("m", "1", _frame(100, 0), _frame(12, 1), [], SETTINGS)


@pytest.mark.parametrize(("alpha", "minimum"), [(0.0, 30), (1.5, 30), (0.05, 1)])
def test_bad_settings_are_refused(alpha: float, minimum: int) -> None:
    with pytest.raises(ValueError, match=r"^monitor\.(alpha|min_captures)=.*: give "):
        DriftSettings(alpha=alpha, min_captures=minimum)


def test_evidently_runs_the_same_class_mix_test_in_its_report(tmp_path: Path) -> None:
    import json

    from modelcycle.monitoring.drift_report import (
        evidently_drift_detected,
        evidently_p_values,
        evidently_report,
    )
    from modelcycle.monitoring.monitor import DriftCheck

    reference, current = _frame(300, 0), _frame(60, 1)
    reference["probabilities_argmax"] = _classes(300, 0, [0.2, 0.5, 0.3]).argmax(axis=1)
    current["probabilities_argmax"] = _classes(60, 1, [0.2, 0.1, 0.7]).argmax(axis=1)
    summary = compare("m", "1", reference, current, ["probabilities"], SETTINGS)
    html, data = evidently_report(DriftCheck(summary, reference, current), tmp_path)
    theirs = evidently_p_values(json.loads(data.read_text()))
    ours = {f.name: f.p_value for f in summary.features}
    assert set(theirs) == set(ours)
    assert [f.name for f in summary.features if f.drifted] == ["probabilities_argmax"]
    for name, p in ours.items():
        assert theirs[name] == pytest.approx(p, rel=1e-6, abs=1e-12), name
    # one drifted column of five is drift for both (Evidently's default wants half of them)
    assert summary.drift_detected and evidently_drift_detected(json.loads(data.read_text()))
    page = html.read_text()
    assert "<html" in page[:2000].lower() and "Dataset Drift is detected" in page


def test_prediction_drift_is_null_when_no_output_column_was_tested() -> None:
    # A reference without model outputs (every row trained the model: reference_unseen 0)
    # tests inputs only; its summary read prediction_drift false, as if outputs were tested.
    reference = _frame(500, 0).drop(columns="probability")
    summary = compare("m", "1", reference, _frame(100, 1), ["probability"], SETTINGS)
    assert [f.kind for f in summary.features] == ["input"] * 3
    assert summary.prediction_drift is None
    # an output column whose reference values are all missing is not tested either
    reference["probability"] = np.nan
    summary = compare("m", "1", reference, _frame(100, 1), ["probability"], SETTINGS)
    assert summary.prediction_drift is None
