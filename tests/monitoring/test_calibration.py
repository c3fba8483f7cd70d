"""Window flag rates on seeded samples: false alarms near alpha at most, shifts detected."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from modelcycle.monitoring.calibration import flag_rate
from modelcycle.monitoring.drift import DriftSettings

SETTINGS = DriftSettings(alpha=0.05, min_captures=10)


def _sample(n: int, seed: int, offset: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {"x": rng.normal(offset, 1, n), "y": rng.normal(0, 1, n), "p": rng.uniform(0, 1, n)}
    )


def test_unshifted_windows_rarely_alarm_and_shifted_ones_are_caught() -> None:
    reference = _sample(2000, 0)
    calm = flag_rate(reference, _sample(2000, 1), ["p"], 50, 200, SETTINGS, seed=0)
    # Bonferroni keeps the family-wise false-alarm rate at or under alpha (plus sampling noise)
    assert calm.flagged <= 0.08 and calm.windows == 200
    shifted = flag_rate(reference, _sample(2000, 1, offset=1.0), ["p"], 50, 200, SETTINGS, seed=0)
    assert shifted.flagged >= 0.95
    assert shifted.per_column["x"] >= 0.95 and shifted.per_column["y"] <= 0.05


def test_a_pool_smaller_than_a_window_is_refused() -> None:
    with pytest.raises(ValueError, match="fewer than a window of 50"):
        flag_rate(_sample(100, 0), _sample(20, 1), [], 50, 10, SETTINGS, seed=0)
