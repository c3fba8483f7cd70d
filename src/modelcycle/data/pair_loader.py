"""A datamodule of labelled pairs drawn from one feature matrix."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from modelcycle.ranks import validation_loader


class PairDataset(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Pairs of rows of `X` with a 0/1 label each."""

    def __init__(self, X: np.ndarray, pairs: np.ndarray, labels: np.ndarray) -> None:
        self.X = torch.as_tensor(X, dtype=torch.float32)
        self.pairs = torch.as_tensor(pairs, dtype=torch.long)
        self.labels = torch.as_tensor(labels, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, b = self.pairs[i]
        return self.X[a], self.X[b], self.labels[i]


class PairDataModule(L.LightningDataModule):
    """Training and validation pairs over one processed feature matrix (all subjects)."""

    def __init__(
        self,
        X: np.ndarray,
        train: tuple[np.ndarray, np.ndarray],
        val: tuple[np.ndarray, np.ndarray],
        batch_size: int = 128,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.train_set = PairDataset(X, *train)
        self.val_set = PairDataset(X, *val)
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers

    def train_dataloader(self) -> DataLoader[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Shuffled training pairs, seeded."""
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            generator=generator,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Every validation pair; under DDP every n-th per process, none counted twice."""
        return validation_loader(self.val_set, 1024, self.num_workers, self.trainer)
