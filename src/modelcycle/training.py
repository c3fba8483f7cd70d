"""Build a Lightning Trainer from typed settings and fit one model, keeping its best weights."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import Logger

log = logging.getLogger(__name__)

#: Lightning precisions that keep the weights in fp32 (so exports stay fp32): full fp32, or
#: autocast to bfloat16 (CPUs and GPUs) or float16 (GPUs) in the forward and backward passes.
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


@dataclass(frozen=True)
class TrainerSettings:
    """How to train: epochs, early stopping and what the console shows."""

    max_epochs: int = 100
    min_epochs: int = 5
    patience: int = 15
    accelerator: str = "cpu"
    devices: int | str = 1
    deterministic: bool = True
    progress_bar: bool = True
    limit_train_batches: float | int = 1.0
    precision: str = "32-true"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"trainer.precision={self.precision!r} is not supported; use one of "
                f"{', '.join(PRECISIONS)} (mixed precisions keep fp32 weights for export)."
            )


def fit(
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    settings: TrainerSettings,
    monitor: str,
    checkpoint_dir: Path,
    loggers: list[Logger],
) -> Path:
    """Train with early stopping on `monitor` (higher is better) and restore the best epoch.

    Returns:
        The checkpoint of the best validation epoch; `module` holds its weights on return.
    """
    # Weights only: the optimizer state would triple what every improving epoch writes.
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="best",
        monitor=monitor,
        mode="max",
        save_top_k=1,
        save_weights_only=True,
    )
    trainer = L.Trainer(
        max_epochs=settings.max_epochs,
        min_epochs=settings.min_epochs,
        accelerator=settings.accelerator,
        devices=settings.devices,
        precision=settings.precision,  # type: ignore[arg-type]
        deterministic=settings.deterministic,
        enable_progress_bar=settings.progress_bar,
        enable_model_summary=False,
        limit_train_batches=settings.limit_train_batches,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        logger=loggers or False,
        callbacks=[
            checkpoint,
            EarlyStopping(monitor=monitor, mode="max", patience=settings.patience),
        ],
    )
    # Lightning may substitute one (16-mixed on a CPU runs as bf16-mixed): log what it runs.
    log.info("Training precision: %s (trainer.precision=%s)", trainer.precision, settings.precision)
    trainer.fit(module, datamodule=datamodule)
    best = Path(checkpoint.best_model_path)
    restore(module, best)
    log.info("Best %s=%.4f at %s", monitor, float(checkpoint.best_model_score or 0), best)
    return best


def restore(module: L.LightningModule, checkpoint: Path) -> L.LightningModule:
    """Load a Lightning checkpoint's weights into `module` (on the CPU); returns it."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    return module
