"""A siamese pair model: one shared encoder, a cosine pair head, and a choice of objectives."""

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

    def calibrate(self, cos: torch.Tensor, y: torch.Tensor) -> None:
        """Fit scale and bias to labelled similarities (Platt scaling), in place.

        Trained alongside the embedding at the encoder's learning rate, the head barely
        leaves its start (scale e², bias -5): a held-out twin pair read 0.07. Fitted here by
        L-BFGS on the cross-entropy, with Platt's targets (n₊+1)/(n₊+2) and 1/(n₋+2), which
        keep scale and bias finite when the pairs separate perfectly.
        """
        y = y.float()
        positives, negatives = float(y.sum()), float(len(y) - y.sum())
        if not positives or not negatives:
            raise ValueError("calibrating the pair head needs related and unrelated pairs")
        target = torch.where(y > 0.5, (positives + 1) / (positives + 2), 1 / (negatives + 2))
        log_scale = self.log_scale.detach().clone().requires_grad_(True)
        bias = self.bias.detach().clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS(
            [log_scale, bias], max_iter=200, line_search_fn="strong_wolfe"
        )
        cos = cos.detach().float()

        def loss() -> torch.Tensor:
            optimizer.zero_grad()
            value = F.binary_cross_entropy_with_logits(log_scale.exp() * cos + bias, target)
            value.backward()
            return value

        with torch.enable_grad():
            optimizer.step(loss)
        with torch.no_grad():
            self.log_scale.copy_(log_scale)
            self.bias.copy_(bias)


# An objective maps (model, unit embeddings a (B, D), b (B, D), labels y (B,)) to a loss.
Objective = Callable[["SiamesePairModel", torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _bce(
    model: SiamesePairModel, a: torch.Tensor, b: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(model.head((a * b).sum(dim=1)), y)


def _head_only(
    model: SiamesePairModel, a: torch.Tensor, b: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    # The head is fitted on detached similarities: calibrated probabilities without shaping
    # the embedding, which the metric-learning objectives below shape on their own.
    return F.binary_cross_entropy_with_logits(model.head((a * b).sum(dim=1).detach()), y)


def _contrastive(
    model: SiamesePairModel, a: torch.Tensor, b: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    # Hadsell et al. (2006) on cosine distance.
    distance = 1.0 - (a * b).sum(dim=1)
    margin_loss = y * distance.pow(2) + (1 - y) * F.relu(model.margin - distance).pow(2)
    return margin_loss.mean() + _head_only(model, a, b, y)


def _infonce(
    model: SiamesePairModel, a: torch.Tensor, b: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    # In-batch InfoNCE over the batch's related pairs: each member must pick its own partner
    # among the partners of every other related pair in the batch.
    positive = y > 0.5
    if not bool(positive.any()):  # nothing to contrast in this batch
        return _head_only(model, a, b, y)
    pa, pb = a[positive], b[positive]
    logits = pa @ pb.T / model.temperature  # (P, P), partners on the diagonal
    target = torch.arange(len(pa), device=a.device)
    nce = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    return nce + _head_only(model, a, b, y)


OBJECTIVES: dict[str, Objective] = {
    "bce": _bce,
    "contrastive": _contrastive,
    "infonce": _infonce,
}


class SiamesePairModel(L.LightningModule):
    """Embeds each member of a pair with the same encoder and scores the pair.

    Args:
        encoder: Maps (batch, n_features) to (batch, dim).
        objective: One of `OBJECTIVES`: "bce", "contrastive" or "infonce".
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        margin: Cosine-distance margin of the contrastive objective.
        temperature: Softmax temperature of the InfoNCE objective.
    """

    def __init__(
        self,
        encoder: nn.Module,
        objective: str = "infonce",
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        margin: float = 1.0,
        temperature: float = 0.1,
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective={objective!r} is not one of {sorted(OBJECTIVES)}.")
        self.save_hyperparameters(ignore=["encoder"])
        self.encoder = encoder
        self.head = CosinePairHead()
        self.objective = OBJECTIVES[objective]
        self.lr, self.weight_decay = lr, weight_decay
        self.margin, self.temperature = margin, temperature
        self.val_auc = BinaryAUROC()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings, (batch, n_features) → (batch, dim)."""
        return F.normalize(self.encoder(x), dim=1)

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each pair's embeddings, (B, F), (B, F) → (B,)."""
        return (self.embed(a) * self.embed(b)).sum(dim=1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Probability that each pair is related, (B, F), (B, F) → (B,)."""
        return torch.sigmoid(self.head(self.similarity(a, b)))

    def _loss(self, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, b, y = batch
        ea, eb = self.embed(a), self.embed(b)
        return self.objective(self, ea, eb, y), (ea * eb).sum(dim=1), y

    def training_step(self, batch: PairBatch, batch_idx: int) -> torch.Tensor:
        """One optimization step on a batch of labelled pairs."""
        loss, _, y = self._loss(batch)
        self.log(
            "train_loss", loss, on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True
        )
        return loss

    def validation_step(self, batch: PairBatch, batch_idx: int) -> None:
        """Accumulate pair similarities for the epoch's ROC-AUC."""
        loss, cos, y = self._loss(batch)
        self.val_auc.update(cos, y.long())
        self.log("val_loss", loss, batch_size=len(y), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        """Log validation ROC-AUC (related vs unrelated pairs), the early-stopping metric.

        Under DDP `compute` gathers every rank's pairs first, so all ranks stop together.
        """
        self.log("val_auc", self.val_auc.compute(), prog_bar=True, sync_dist=True)
        self.val_auc.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW over encoder and head."""
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
