"""Node classification on ego graphs with PyG's dense graph convolutions.

`EgoGNN` runs `layers` convolutions (GCN, GraphSAGE or GAT) over a batch of padded ego graphs
(`modelcycle.data.ego_graphs`) and classifies each graph's centre, row 0. The dense layers
export to ONNX, so the served model is the trained one.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from modelcycle.kinds import declares
from modelcycle.models.image_classifier import log_accuracy

#: The convolutions `model.name` chooses from.
NETWORKS = ("gcn", "sage", "gat")


#: Attention heads of "gat" when `heads` is not given.
GAT_HEADS = 4


def _check_name(name: object, heads: object = None) -> None:
    if name not in NETWORKS:
        raise ValueError(f"name={name!r}: give one of {', '.join(NETWORKS)}.")
    if heads is not None and name != "gat":  # it changed nothing, sweeps included
        raise ValueError(
            f"heads={heads!r}: attention heads are gat's alone, and name={name}; leave "
            "model.heads out, or set model.name=gat."
        )


@declares(
    ranges={"hidden": (1, None), "layers": (1, 5), "dropout": (0, 1), "heads": (1, None)},
    check=lambda values: _check_name(values.get("name", "gcn"), values.get("heads")),
)
class EgoGNN(nn.Module):
    """Dense graph convolutions over padded ego graphs; logits and embedding of each centre.

    Args:
        in_dim: Node feature width.
        num_classes: Classes of the centre node.
        name: "gcn" (DenseGCNConv), "sage" (DenseSAGEConv) or "gat" (DenseGATConv, `heads`
            attention heads averaged).
        hidden: Width of every layer.
        layers: Convolutions; the centre sees that many links away within its ego graph.
        dropout: Dropout before each convolution and the classifier.
        heads: Attention heads of "gat" (default `GAT_HEADS`); other networks refuse it.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        name: str = "gcn",
        hidden: int = 64,
        layers: int = 2,
        dropout: float = 0.5,
        heads: int | None = None,
    ) -> None:
        super().__init__()
        from torch_geometric.nn import DenseGATConv, DenseGCNConv, DenseSAGEConv

        _check_name(name, heads)

        def conv(width_in: int) -> nn.Module:
            if name == "gat":
                return DenseGATConv(width_in, hidden, heads=heads or GAT_HEADS, concat=False)
            if name == "sage":
                return DenseSAGEConv(width_in, hidden)
            return DenseGCNConv(width_in, hidden)

        self.convs = nn.ModuleList(conv(in_dim if k == 0 else hidden) for k in range(layers))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, num_classes)

    def forward(
        self, x: torch.Tensor, adj: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, m, d), (b, m, m), (b, m) → centre logits (b, classes) and embedding (b, hidden)."""
        keep = mask > 0.5
        h = x
        for conv in self.convs:
            h = F.relu(conv(self.dropout(h), adj, keep))
        centre = h[:, 0]
        return self.head(self.dropout(centre)), centre


class NodeClassifier(L.LightningModule):
    """An `EgoGNN` trained with cross-entropy and AdamW; early stopping on validation accuracy."""

    def __init__(self, network: EgoGNN, lr: float = 0.01, weight_decay: float = 5e-4) -> None:
        super().__init__()
        self.network, self.lr, self.weight_decay = network, lr, weight_decay
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, adj: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Centre logits of a batch of ego graphs."""
        return self.network(x, adj, mask)[0]

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Cross-entropy of the centres' classes."""
        x, adj, mask, labels = batch
        loss = F.cross_entropy(self(x, adj, mask), labels)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        """Keep predictions for the epoch's accuracy."""
        x, adj, mask, labels = batch
        self._val.append((self(x, adj, mask).argmax(1), labels))

    def on_validation_epoch_end(self) -> None:
        """Log validation accuracy (summed over DDP ranks), the early-stopping metric."""
        log_accuracy(self, self._val)

    def configure_optimizers(self) -> Any:
        """AdamW at a constant rate."""
        return torch.optim.AdamW(self.parameters(), self.lr, weight_decay=self.weight_decay)


class EgoClassifier(nn.Module):
    """The deployable model: ego-graph arrays in; confidence, probabilities, embedding out."""

    def __init__(self, classifier: NodeClassifier) -> None:
        super().__init__()
        self.network = classifier.network

    def forward(
        self, x: torch.Tensor, adj: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(b,) confidence, (b, classes) probabilities, (b, hidden) embedding of the centres."""
        logits, embedding = self.network(x, adj, mask)
        probabilities = torch.softmax(logits, dim=1)
        return probabilities.max(dim=1).values, probabilities, embedding
