"""A siamese pair model: one shared encoder, a cosine pair head, BCE or contrastive training."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import BinaryAUROC

PairBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (B, F), (B, F), (B,) in {0, 1}


class CosinePairHead(nn.Module):
    """logit = scale · cos(a, b) + bias, with learned scale and bias; symmetric in a and b."""

    def __init__(self) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(2.0))
        self.bias = nn.Parameter(torch.tensor(-5.0))

    def forward(self, cos: torch.Tensor) -> torch.Tensor:
        """Cosine similarities (B,) → logits (B,)."""
        return self.log_scale.exp() * cos + self.bias


def _bce(model: SiamesePairModel, cos: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(model.head(cos), y)


def _contrastive(model: SiamesePairModel, cos: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # Hadsell et al. (2006) on cosine distance; the head is fitted on detached similarities
    # so that the predicted probability stays calibrated without shaping the embedding.
    distance = 1.0 - cos
    margin_loss = y * distance.pow(2) + (1 - y) * F.relu(model.margin - distance).pow(2)
    return margin_loss.mean() + _bce(model, cos.detach(), y)


OBJECTIVES: dict[str, Callable[[SiamesePairModel, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "bce": _bce,
    "contrastive": _contrastive,
}


class SiamesePairModel(L.LightningModule):
    """Embeds each member of a pair with the same encoder and scores the pair.

    Args:
        encoder: Maps (batch, n_features) to (batch, dim).
        objective: "bce" or "contrastive".
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        margin: Cosine-distance margin of the contrastive objective.
    """

    def __init__(
        self,
        encoder: nn.Module,
        objective: str = "bce",
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        margin: float = 1.0,
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective={objective!r} is not one of {sorted(OBJECTIVES)}.")
        self.save_hyperparameters(ignore=["encoder"])
        self.encoder = encoder
        self.head = CosinePairHead()
        self.objective = OBJECTIVES[objective]
        self.lr, self.weight_decay, self.margin = lr, weight_decay, margin
        self.val_auc = BinaryAUROC()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings, (batch, n_features) → (batch, dim)."""
        return F.normalize(self.encoder(x), dim=1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Probability that each pair is related, (B, F), (B, F) → (B,)."""
        return torch.sigmoid(self.head((self.embed(a) * self.embed(b)).sum(dim=1)))

    def _cosine(self, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
        a, b, y = batch
        return (self.embed(a) * self.embed(b)).sum(dim=1), y

    def training_step(self, batch: PairBatch, batch_idx: int) -> torch.Tensor:
        """One optimization step on a batch of labelled pairs."""
        cos, y = self._cosine(batch)
        loss = self.objective(self, cos, y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: PairBatch, batch_idx: int) -> None:
        """Accumulate pair scores for the epoch's ROC-AUC."""
        cos, y = self._cosine(batch)
        self.val_auc.update(cos, y.long())
        self.log("val_loss", self.objective(self, cos, y), batch_size=len(y))

    def on_validation_epoch_end(self) -> None:
        """Log validation ROC-AUC (twin-like vs unrelated), the early-stopping metric."""
        self.log("val_auc", self.val_auc.compute(), prog_bar=True)
        self.val_auc.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW over encoder and head."""
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
