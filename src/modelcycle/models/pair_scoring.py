"""A siamese model with its fitted preprocessing in front: raw measures in, pair scores out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modelcycle.data.features import ResidualStandardizer
from modelcycle.models.siamese import SiamesePairModel


class RawPairScorer(nn.Module):
    """Scores pairs of raw measure vectors with covariates, as a served request arrives.

    Preprocessing (median imputation of NaN, z-scores, covariate regression) is the one
    fitted on the training rows, as buffers; so the exported ONNX model is self-contained.
    Inputs: a (B, F) measures (NaN = missing), a_covariates (B, C), b, b_covariates.
    Outputs: probability (B,) that the pair is related, similarity (B,) cosine in [-1, 1],
    embedding (B, D) the mean of the two people's unit embeddings (for drift monitoring).
    """

    median: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    beta: torch.Tensor
    residual_scale: torch.Tensor

    def __init__(self, model: SiamesePairModel, standardizer: ResidualStandardizer) -> None:
        super().__init__()
        self.encoder, self.head = model.encoder, model.head
        for name in ("median", "mean", "scale", "beta", "residual_scale"):
            value = torch.as_tensor(getattr(standardizer, name), dtype=torch.float32)
            self.register_buffer(name, value)

    def embed(self, x: torch.Tensor, covariates: torch.Tensor) -> torch.Tensor:
        """(B, F) raw measures, (B, C) covariates → (B, D) unit embeddings."""
        filled = torch.where(torch.isnan(x), self.median, x)
        z = (filled - self.mean) / self.scale
        design = torch.cat([torch.ones_like(covariates[:, :1]), covariates], dim=1)
        residual = (z - design @ self.beta) / self.residual_scale
        return F.normalize(self.encoder(residual), dim=1)

    def forward(
        self,
        a: torch.Tensor,
        a_covariates: torch.Tensor,
        b: torch.Tensor,
        b_covariates: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Probability, cosine similarity and mean embedding of each pair."""
        ea, eb = self.embed(a, a_covariates), self.embed(b, b_covariates)
        similarity = (ea * eb).sum(dim=1)
        return torch.sigmoid(self.head(similarity)), similarity, (ea + eb) / 2
