"""The siamese pair model: symmetry, objectives, learning on a toy problem, a short fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from sklearn.metrics import roc_auc_score

from modelcycle.data.pair_loader import PairDataModule
from modelcycle.models.encoders import FeatureSpace, MLPEncoder
from modelcycle.models.siamese import OBJECTIVES, SiamesePairModel
from modelcycle.training import TrainerSettings, fit

N_SIGNAL, N_NOISE = 4, 12

# Calling training_step outside a Trainer makes Lightning warn that self.log has no trainer.
no_trainer_warning = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


def _toy(n_families: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of relatives (rows 2f, 2f+1) who share 4 features; 12 loud features are noise.

    The noise dominates Pearson correlation across features, so the untrained model (which
    starts at that baseline) cannot tell relatives apart; reweighting features can.
    """
    rng = np.random.default_rng(seed)
    family = rng.normal(size=(n_families, N_SIGNAL))
    X = np.empty((2 * n_families, N_SIGNAL + N_NOISE))
    for member in range(2):
        X[member::2, :N_SIGNAL] = family + 0.2 * rng.normal(size=(n_families, N_SIGNAL))
        X[member::2, N_SIGNAL:] = 3.0 * rng.normal(size=(n_families, N_NOISE))
    related = np.array([(2 * f, 2 * f + 1) for f in range(n_families)])
    i, j = np.triu_indices(2 * n_families, k=1)
    unrelated = np.column_stack([i, j])[i // 2 != j // 2]
    return X, related, unrelated


def _model(
    objective: str, n_features: int = N_SIGNAL + N_NOISE, lr: float = 1e-3
) -> SiamesePairModel:
    space = FeatureSpace([f"f{k}" for k in range(n_features)], np.zeros((2, n_features)))
    return SiamesePairModel(MLPEncoder(space, hidden=(32,)), objective=objective, lr=lr)


def _pair_auc(
    model: SiamesePairModel, X: np.ndarray, related: np.ndarray, unrelated: np.ndarray
) -> float:
    pairs = np.r_[related, unrelated]
    x = torch.as_tensor(X, dtype=torch.float32)
    with torch.no_grad():
        p = model(x[pairs[:, 0]], x[pairs[:, 1]]).numpy()
    return float(roc_auc_score(np.r_[np.ones(len(related)), np.zeros(len(unrelated))], p))


def test_pair_probability_is_symmetric_and_in_unit_interval() -> None:
    torch.manual_seed(0)
    space = FeatureSpace([f"f{k}" for k in range(6)], np.zeros((2, 6)))
    model = SiamesePairModel(MLPEncoder(space, residual=False, dim=4), objective="bce").eval()
    a, b = torch.randn(7, 6), torch.randn(7, 6)
    p = model(a, b)
    assert p.shape == (7,)
    assert torch.allclose(p, model(b, a))
    assert ((p > 0) & (p < 1)).all()
    assert not torch.allclose(p, p[0].expand(7))  # depends on the pair


def test_identical_pair_scores_above_opposite_pair() -> None:
    model = _model("bce", n_features=6).eval()
    a = torch.randn(1, 6)
    # at init the embedding is the centred row: cos(a, a) = 1 and cos(a, -a) = -1
    assert model(a, a).item() > model(a, -a).item()
    head = model.head
    expected = torch.sigmoid(head.log_scale.exp() * 1.0 + head.bias)
    assert model(a, a).item() == pytest.approx(expected.item(), rel=1e-5)


def test_unknown_objective_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="triplet") as info:
        _model("triplet")
    for name in OBJECTIVES:
        assert name in str(info.value)


@no_trainer_warning
@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_each_objective_gives_a_finite_scalar_loss_with_gradients(objective: str) -> None:
    torch.manual_seed(0)
    model = _model(objective, n_features=6)
    a, b = torch.randn(8, 6), torch.randn(8, 6)
    y = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    loss = model.training_step((a, b, y), 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # the encoder's per-feature weights and its zero-initialized last layer both get a signal
    for name in ("encoder.skip.weight", "encoder.net.4.weight"):
        grad = grads[name]
        assert grad is not None and torch.count_nonzero(grad) > 0, name
    # the head is fitted whatever the objective
    head_grad = grads["head.bias"]
    assert head_grad is not None and head_grad.abs().item() > 0


@no_trainer_warning
@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_training_raises_held_out_pair_auc(objective: str) -> None:
    torch.manual_seed(0)
    X, related, unrelated = _toy(32, seed=0)
    X_test, related_test, unrelated_test = _toy(32, seed=1)  # new families
    model = _model(objective, lr=3e-2)
    optimizer = model.configure_optimizers()
    before = _pair_auc(model, X_test, related_test, unrelated_test)
    assert before < 0.65  # the toy really defeats the correlation baseline

    rng = np.random.default_rng(0)
    x = torch.as_tensor(X, dtype=torch.float32)
    model.train()
    for step in range(80):
        negatives = unrelated[rng.choice(len(unrelated), size=96, replace=False)]
        pairs = np.r_[related, negatives]
        y = torch.as_tensor(np.r_[np.ones(len(related)), np.zeros(len(negatives))]).float()
        loss = model.training_step((x[pairs[:, 0]], x[pairs[:, 1]], y), step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    after = _pair_auc(model, X_test, related_test, unrelated_test)
    assert after > 0.75
    assert after > before + 0.15


def test_fit_writes_best_checkpoint_and_logs_val_auc(tmp_path: Path) -> None:
    torch.manual_seed(0)
    X, related, unrelated = _toy(24, seed=0)
    train_families, val_families = related[:16], related[16:]
    train_rows, val_rows = train_families.ravel(), val_families.ravel()
    in_train = np.isin(unrelated, train_rows).all(axis=1)
    in_val = np.isin(unrelated, val_rows).all(axis=1)
    train_neg = unrelated[in_train][:64]
    val_neg = unrelated[in_val]
    datamodule = PairDataModule(
        X,
        (np.r_[train_families, train_neg], np.r_[np.ones(16), np.zeros(len(train_neg))]),
        (np.r_[val_families, val_neg], np.r_[np.ones(8), np.zeros(len(val_neg))]),
        batch_size=32,
    )
    model = _model("bce", lr=1e-2)
    settings = TrainerSettings(max_epochs=3, min_epochs=1, patience=2, progress_bar=False)

    best = fit(model, datamodule, settings, "val_auc", tmp_path / "ckpt", loggers=[])

    assert best == tmp_path / "ckpt" / "best.ckpt"
    assert best.is_file()
    val_auc = model.trainer.callback_metrics["val_auc"]
    assert 0.0 <= float(val_auc) <= 1.0
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    assert 1 <= checkpoint["epoch"] + 1 <= 3
    assert "optimizer_states" not in checkpoint  # weights only: what evaluation reloads
    callback = model.trainer.checkpoint_callback
    assert isinstance(callback, ModelCheckpoint) and callback.monitor == "val_auc"
    assert callback.best_model_score is not None and 0.0 <= float(callback.best_model_score) <= 1
    # the module holds the best epoch's weights on return
    for name, value in model.state_dict().items():
        assert torch.equal(value, checkpoint["state_dict"][name]), name


@no_trainer_warning
def test_infonce_on_a_batch_without_related_pairs_fits_only_the_head() -> None:
    torch.manual_seed(0)
    model = _model("infonce", n_features=6)
    a, b, y = torch.randn(4, 6), torch.randn(4, 6), torch.zeros(4)
    loss = model.training_step((a, b, y), 0)
    assert torch.isfinite(loss)
    cos = (model.embed(a) * model.embed(b)).sum(dim=1)
    logits = model.head.log_scale.exp() * cos + model.head.bias
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert model.head.bias.grad is not None and model.head.bias.grad.abs().item() > 0
    for name, p in model.encoder.named_parameters():
        assert p.grad is None or torch.count_nonzero(p.grad) == 0, name


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_validation_pairs_are_shared_across_processes_without_repeats(world_size: int) -> None:
    """Under DDP every validation pair is validated exactly once (no padding repeats)."""
    from types import SimpleNamespace

    from torch.utils.data.distributed import DistributedSampler

    rng = np.random.default_rng(0)
    pairs = rng.integers(0, 10, (7, 2))  # 7 pairs: no equal split over 2 or 3 processes
    datamodule = PairDataModule(
        rng.normal(size=(10, 3)), (pairs, np.ones(7)), (pairs, np.arange(7.0) % 2)
    )
    seen = []
    for rank in range(world_size):
        datamodule.trainer = SimpleNamespace(world_size=world_size, global_rank=rank)  # type: ignore[assignment]
        loader = datamodule.val_dataloader()
        # A DistributedSampler of its own, so Lightning keeps it instead of a padding one.
        assert isinstance(loader.sampler, DistributedSampler) == (world_size > 1)
        seen += [int(i) for i in loader.sampler]
        assert sum(len(batch[2]) for batch in loader) == len(range(rank, 7, world_size))
    assert sorted(seen) == list(range(7))
