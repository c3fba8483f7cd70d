"""Semantic segmentation: a MONAI U-Net over pixels, trained with cross-entropy plus Dice.

The network sees (n, 3, h, w) normalised images and returns (n, classes, h, w) logits;
`Segmenter` trains it, `PixelSegmenter` is what is exported and served.
"""

from __future__ import annotations

from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from modelcycle.data.image_set import IGNORE
from modelcycle.kinds import declares
from modelcycle.models.image_classifier import PixelNormalize
from modelcycle.models.inference import evaluating

#: The U-Nets `model.name` chooses from, by MONAI class.
NETWORKS = ("unet", "attention_unet", "flexible_unet")


class SegmentationSizeError(ValueError):
    """An image side the network's down-sampling cannot take; the message says what to set."""


@declares(
    ranges={"width": (1, None), "depth": (2, 8), "res_units": (0, None), "dropout": (0, 1)},
    check=lambda values: _check_name(values.get("name", "unet")),
)
def monai_unet(
    num_classes: int,
    name: str = "unet",
    width: int = 16,
    depth: int = 4,
    res_units: int = 2,
    dropout: float = 0.0,
) -> nn.Module:
    """A 2-D MONAI U-Net of `depth` levels, `width` channels at the top, doubling per level.

    Args:
        num_classes: Output channels, one per class.
        name: "unet" (MONAI `UNet`, residual units), "attention_unet" (`AttentionUnet`:
            attention gates on the skip connections; `res_units` does not apply) or
            "flexible_unet" (`FlexibleUNet`: an EfficientNet-B0 encoder, randomly
            initialised (no weights are downloaded), with a U-Net decoder; 7 M parameters;
            `width`, `depth` and `res_units` do not apply).
        width: Channels of the first level.
        depth: Levels; the image side must divide by 2 ** (depth - 1).
        res_units: Residual units per level of `UNet`.
        dropout: Dropout share inside the network's blocks.
    """
    from monai.networks.nets import AttentionUnet, FlexibleUNet, UNet

    _check_name(name)
    if name == "flexible_unet":
        return FlexibleUNet(3, num_classes, "efficientnet-b0", pretrained=False, dropout=dropout)
    channels = tuple(width * 2**level for level in range(depth))
    strides = (2,) * (depth - 1)
    if name == "attention_unet":
        return AttentionUnet(2, 3, num_classes, channels, strides, dropout=dropout)
    return UNet(2, 3, num_classes, channels, strides, num_res_units=res_units, dropout=dropout)


def _check_name(name: object) -> None:
    if name not in NETWORKS:
        raise ValueError(f"name={name!r}: give one of {', '.join(NETWORKS)}.")


def check_segmentation_size(network: nn.Module, size: int) -> None:
    """Run one blank image through `network`, so that a side it cannot take is named at once.

    Raises:
        SegmentationSizeError: The side, the sides near it that the network takes (found by
            trying them), and the two settings that fix it.
    """
    problem = _size_problem(network, size)
    if problem is None:
        return
    step = next(
        (
            s
            for s in (2**k for k in range(1, 9))
            if size >= s and all(_size_problem(network, n) is None for n in _near(size, s))
        ),
        None,
    )
    takes = (
        f"it takes multiples of {step} (e.g. {' or '.join(map(str, _near(size, step)))})"
        if step is not None
        else "no side near it worked either"
    )
    raise SegmentationSizeError(
        f"The U-Net cannot segment the data's {size}×{size} images ({problem}); {takes}. Set "
        "data.image_size to such a side, or lower model.depth (each level halves the side)."
    )


def _near(size: int, step: int) -> tuple[int, int]:
    """The multiples of `step` just below and above `size`."""
    below = size - size % step
    return below, below + step


def _size_problem(network: nn.Module, size: int) -> str | None:
    """What goes wrong when `network` segments a blank `size`-pixel square, or None."""
    try:
        with evaluating(network):
            out = network(torch.zeros(1, 3, size, size))
    except Exception as err:  # a convolution or a skip connection of mismatched sizes
        return str(err).rstrip(".").splitlines()[0] if str(err) else type(err).__name__
    if tuple(out.shape[2:]) != (size, size):
        return f"it returns {tuple(out.shape[2:])} masks"
    return None


class Segmenter(L.LightningModule):
    """A U-Net trained with cross-entropy plus soft Dice, AdamW and a cosine schedule.

    Pixels marked `IGNORE` in a mask count in neither loss nor metric. Training images are
    flipped and turned by multiples of 90° at random (a tissue section has no up or left),
    masks with them.

    Args:
        network: (n, 3, h, w) normalised images → (n, classes, h, w) logits.
        normalize: Pixel normalisation in front of it.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay.
        dice_weight: Weight of the soft Dice loss beside cross-entropy.
    """

    monitor_metric: ClassVar[str] = "val_mean_dice"

    def __init__(
        self,
        network: nn.Module,
        normalize: PixelNormalize,
        num_classes: int,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        dice_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.network, self.normalize, self.num_classes = network, normalize, num_classes
        self.lr, self.weight_decay, self.dice_weight = lr, weight_decay, dice_weight
        self._confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, h, w, 3) pixels → (n, classes, h, w) logits."""
        return self.network(self.normalize(pixels))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Cross-entropy plus soft Dice on a randomly flipped and turned batch."""
        pixels, masks = batch
        x, y = _flip_and_turn(self.normalize(pixels), masks)
        logits = self.network(x)
        loss = segmentation_loss(logits, y, self.dice_weight)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        """Add the batch's pixels to the epoch's confusion matrix."""
        pixels, masks = batch
        predicted = self(pixels).argmax(1)
        self._confusion = self._confusion.to(masks.device) + confusion_matrix(
            predicted, masks, self.num_classes
        )

    def on_validation_epoch_end(self) -> None:
        """Log the mean Dice over classes (the early-stopping metric), summed over ranks."""
        confusion = self.trainer.strategy.reduce(self._confusion.float(), reduce_op="sum")
        self._confusion = torch.zeros_like(self._confusion)
        dice = dice_per_class(confusion)
        present = ~torch.isnan(dice)
        mean = dice[present].mean() if present.any() else torch.tensor(0.0)
        # Every rank holds the same value; sync_dist only tells Lightning so.
        self.log("val_mean_dice", mean, prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> Any:
        """AdamW with a cosine schedule over the trainer's epochs."""
        optimizer = torch.optim.AdamW(self.parameters(), self.lr, weight_decay=self.weight_decay)
        epochs = max(1, int(self.trainer.max_epochs or 1))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def _flip_and_turn(x: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One random flip and quarter-turn for the whole batch, the same for images and masks."""
    turns = int(torch.randint(0, 4, ()))
    x, masks = torch.rot90(x, turns, (2, 3)), torch.rot90(masks, turns, (1, 2))
    if bool(torch.rand(()) < 0.5):
        x, masks = x.flip(3), masks.flip(2)
    return x, masks


def segmentation_loss(
    logits: torch.Tensor, masks: torch.Tensor, dice_weight: float
) -> torch.Tensor:
    """Cross-entropy plus `dice_weight` × (1 - soft Dice averaged over classes).

    Args:
        logits: (n, classes, h, w).
        masks: (n, h, w) class indices; `IGNORE` pixels count in neither term.
        dice_weight: Weight of the Dice term (0: cross-entropy alone).
    """
    target = masks.long()
    valid = target != IGNORE
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE)
    if not dice_weight:
        return ce
    probabilities = torch.softmax(logits, dim=1) * valid[:, None]
    one_hot = F.one_hot(torch.where(valid, target, 0), logits.shape[1]).permute(0, 3, 1, 2)
    one_hot = one_hot * valid[:, None]
    overlap = (probabilities * one_hot).sum((0, 2, 3))
    total = probabilities.sum((0, 2, 3)) + one_hot.sum((0, 2, 3))
    dice = (2 * overlap + 1.0) / (total + 1.0)
    return ce + dice_weight * (1 - dice.mean())


def confusion_matrix(predicted: torch.Tensor, masks: torch.Tensor, n: int) -> torch.Tensor:
    """(n, n) pixel counts, rows the true class, columns the predicted; `IGNORE` left out."""
    target = masks.long().reshape(-1)
    guess = predicted.long().reshape(-1)
    keep = target != IGNORE
    return torch.bincount(target[keep] * n + guess[keep], minlength=n * n).reshape(n, n)


def dice_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """Dice of each class from a confusion matrix; NaN where a class is neither true nor guessed."""
    confusion = confusion.double()
    hits = torch.diagonal(confusion)
    total = confusion.sum(0) + confusion.sum(1)
    return torch.where(total > 0, 2 * hits / total.clamp(min=1), torch.nan)


class PixelSegmenter(nn.Module):
    """The deployable model: pixels in; confidence, mean class probabilities, probability maps out.

    `confidence` is the mean over pixels of the top class's probability; `class_probability`
    the mean probability of each class over the image; `probabilities` the (n, classes, h, w)
    maps the served mask is read from.
    """

    def __init__(self, segmenter: Segmenter) -> None:
        super().__init__()
        self.normalize, self.network = segmenter.normalize, segmenter.network

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(n, h, w, 3) pixels → (n,), (n, classes), (n, classes, h, w)."""
        probabilities = torch.softmax(self.network(self.normalize(pixels)), dim=1)
        confidence = probabilities.max(dim=1).values.mean(dim=(1, 2))
        return confidence, probabilities.mean(dim=(2, 3)), probabilities
