import numpy as np

from modelcycle.data.features import ResidualStandardizer


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    C = np.column_stack([rng.uniform(18, 30, n), rng.integers(0, 2, n), rng.integers(0, 2, n)])
    X = 50 + C @ rng.normal(size=(3, 6)) * 5 + rng.normal(size=(n, 6))
    return X, C


def test_fitted_on_training_rows_only() -> None:
    X, C = _data(200, 0)
    train = np.arange(150)
    fitted = ResidualStandardizer.fit(X[train], C[train])
    X2 = X.copy()
    X2[150:] += 1000  # test rows change wildly
    refit = ResidualStandardizer.fit(X2[train], C[train])
    for field in ("median", "mean", "scale", "beta", "residual_scale"):
        assert np.array_equal(getattr(fitted, field), getattr(refit, field))
    # but fitting on everything would differ
    assert not np.allclose(ResidualStandardizer.fit(X2, C).mean, fitted.mean)


def test_covariates_are_regressed_out_on_training_rows() -> None:
    X, C = _data(300, 1)
    Z = ResidualStandardizer.fit(X, C).transform(X, C)
    corr = np.corrcoef(np.column_stack([Z, C]), rowvar=False)[:6, 6:]
    assert np.abs(corr).max() < 1e-8
    assert np.allclose(Z.mean(0), 0, atol=1e-9) and np.allclose(Z.std(0), 1)


def test_missing_values_take_the_training_median() -> None:
    X, C = _data(100, 2)
    X[3, 2] = np.nan
    fitted = ResidualStandardizer.fit(X[10:], C[10:])
    assert fitted.median[2] == np.median(X[10:, 2])
    filled = X[3].copy()
    filled[2] = fitted.median[2]
    assert np.allclose(fitted.transform(X[3:4], C[3:4]), fitted.transform(filled[None], C[3:4]))
