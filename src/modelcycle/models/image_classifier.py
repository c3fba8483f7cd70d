"""Image classifiers: any timm backbone behind in-model pixel normalisation.

The module takes raw RGB pixels, (batch, height, width, 3) uint8 or float in 0..255, so the
exported ONNX needs no preprocessing outside it: a served image is decoded, resized and fed.
"""

from __future__ import annotations

import difflib
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F

from modelcycle.kinds import declares
from modelcycle.messages import clause
from modelcycle.models.inference import evaluating

log = logging.getLogger(__name__)


class BackboneError(ValueError):
    """The backbone asked for cannot be built or cannot take the data; the message says why."""


class PretrainedWeightsError(BackboneError):
    """Pretrained weights were asked for but could not be loaded; the message says the fix."""


def check_timm_name(values: dict[str, Any]) -> None:
    """Refuse a `name` timm does not know, suggesting the closest it does.

    Raises:
        ValueError: `name=...`, the close names and where to list them all.
    """
    import timm

    name = values.get("name")
    if not isinstance(name, str) or timm.is_model(name):
        return  # a name that is not text is named by the kind check
    known = timm.list_models()
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f"; close: {', '.join(close)}" if close else ""
    raise ValueError(
        f"name={name!r}: timm has no such model{hint} (timm.list_models() lists all {len(known)})."
    )


def check_timm_model(values: dict[str, Any]) -> None:
    """`check_timm_name`, then whether pretrained weights can be had at all, before any data.

    Offline, a missing download was said only when the model was built, after every image
    had been decoded (30 s at 224 px).

    Raises:
        ValueError: `name=...` as `check_timm_name`, or `pretrained=true: ...` when the hub
            does not resolve and the weights are not in its local cache.
    """
    check_timm_name(values)
    name = values.get("name")
    if values.get("pretrained") is not True or not isinstance(name, str) or hub_reachable():
        return
    if not weights_cached(name):
        raise ValueError(
            f"pretrained=true: {hub_host()} does not resolve (no network?) and the weights of "
            f"{name!r} are not in the local Hugging Face cache; set model.pretrained=false "
            "(random initialisation), or run once where the hub is reachable."
        )


def weights_cached(name: str) -> bool:
    """Whether timm model `name`'s pretrained weights are in the local Hugging Face cache.

    True also when it cannot tell (weights from another host than the hub): the load says.
    """
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    config = get_pretrained_cfg(name)
    repo = getattr(config, "hf_hub_id", None)
    if not repo:
        return True
    files = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)


@declares(ranges={"drop_rate": (0, 1)}, check=check_timm_model)
def timm_backbone(
    num_classes: int, name: str = "resnet18", pretrained: bool = False, drop_rate: float = 0.0
) -> nn.Module:
    """`timm.create_model(name, pretrained, num_classes)`, saying where its weights come from."""
    import timm

    if not pretrained:
        log.info("%s: random initialisation (model.pretrained=false; no weights downloaded)", name)
        return timm.create_model(
            name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate
        )
    reachable = hub_reachable()
    where = "the Hugging Face hub" if reachable else "the local Hugging Face cache (offline)"
    log.info("%s: loading pretrained weights from %s", name, where)
    try:
        with _hub_offline(not reachable):
            model = timm.create_model(
                name, pretrained=True, num_classes=num_classes, drop_rate=drop_rate
            )
    except Exception as err:  # hub downloads raise many kinds: network, HTTP, missing tag
        why = (
            clause(err)
            if reachable
            else f"{hub_host()} does not resolve (no network?) and they are not in the local "
            "Hugging Face cache"
        )
        raise PretrainedWeightsError(
            f"Could not load pretrained weights of timm model {name!r}: {why}. Offline, set "
            "model.pretrained=false (random initialisation)."
        ) from err
    log.info("%s: pretrained weights loaded, new %d-class head", name, num_classes)
    return model


def hub_reachable() -> bool:
    """Whether the Hugging Face hub's host resolves (HF_ENDPOINT if set).

    Without a network the hub's client retries each file for about 25 s; a host that does
    not resolve is known at once.
    """
    try:
        socket.getaddrinfo(hub_host(), 443)
    except OSError:
        return False
    return True


def hub_host() -> str:
    """The Hugging Face hub's host name: huggingface.co, or HF_ENDPOINT's."""
    from huggingface_hub import constants

    return urlparse(constants.ENDPOINT).hostname or "huggingface.co"


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """The hub's client in offline mode (local cache only) while `offline` holds.

    The client reads `HF_HUB_OFFLINE` once, at import, into `constants.HF_HUB_OFFLINE`, and
    consults that at each call.
    """
    from huggingface_hub import constants

    was = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = was or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = was


def check_image_size(backbone: nn.Module, size: int) -> None:
    """Run one blank `size`×`size` image through `backbone`, so a misfit is named at once.

    Some backbones (vision transformers) take only the size they were built for.

    Raises:
        BackboneError: The size, what the backbone says and the two ways out.
    """
    try:
        with evaluating(backbone):
            backbone(torch.zeros(1, 3, size, size))
    except Exception as err:  # timm models assert, or fail in a reshape or a convolution
        timm_cfg = getattr(backbone, "pretrained_cfg", None) or {}
        name = f"={timm_cfg['architecture']!r}" if "architecture" in timm_cfg else ""
        built = timm_cfg.get("input_size")
        takes = f" (it is built for {built[1]}×{built[2]})" if built else ""
        raise BackboneError(
            f"The backbone (model.name{name}) cannot take the data's {size}×{size} "
            f"images{takes}: "
            f"{str(err).rstrip('.')}. Set data.image_size to a size it takes, or choose a "
            "backbone that takes any size (resnet18, efficientnet_b0, ...)."
        ) from err


class PixelNormalize(nn.Module):
    """(n, h, w, 3) pixels in 0..255 → (n, 3, h, w) float, normalised with the model's mean/std."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, h, w, 3) pixels → (n, 3, h, w) normalised floats."""
        x = pixels.float().permute(0, 3, 1, 2) / 255.0
        return (x - self.mean) / self.std


def normalizer_for(backbone: nn.Module) -> PixelNormalize:
    """The mean/std timm's data config gives for `backbone` (ImageNet's by default)."""
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(backbone)
    return PixelNormalize(tuple(config["mean"]), tuple(config["std"]))


class ImageClassifier(L.LightningModule):
    """A timm backbone trained with label smoothing, AdamW and a cosine learning-rate schedule.

    Args:
        backbone: Maps (n, 3, h, w) normalised images to (n, classes) logits.
        normalize: Pixel normalisation in front of it.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay.
        label_smoothing: Cross-entropy label smoothing.
        hflip: Flip training images left-right at random (off when handedness matters).
        shift: Largest random translation of training images, in pixels.
    """

    def __init__(
        self,
        backbone: nn.Module,
        normalize: PixelNormalize,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        label_smoothing: float = 0.1,
        hflip: bool = True,
        shift: int = 4,
    ) -> None:
        super().__init__()
        self.backbone, self.normalize = backbone, normalize
        self.lr, self.weight_decay, self.label_smoothing = lr, weight_decay, label_smoothing
        self.hflip, self.shift = hflip, shift
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, h, w, 3) pixels → (n, classes) logits."""
        return self.backbone(self.normalize(pixels))

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Random flips and translations of a normalised (n, 3, h, w) batch."""
        if self.hflip:
            flip = torch.rand(len(x), device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if self.shift > 0:
            s = self.shift
            padded = F.pad(x, (s, s, s, s), mode="replicate")
            dy, dx = (int(v) for v in torch.randint(0, 2 * s + 1, (2,)))
            x = padded[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]
        return x

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Cross-entropy with label smoothing on an augmented batch."""
        pixels, labels = batch
        logits = self.backbone(self.augment(self.normalize(pixels)))
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        """Keep predictions for the epoch's accuracy."""
        pixels, labels = batch
        self._val.append((self(pixels).argmax(1), labels))

    def on_validation_epoch_end(self) -> None:
        """Log validation accuracy, the early-stopping metric."""
        log_accuracy(self, self._val)

    def configure_optimizers(self) -> Any:
        """AdamW with a cosine schedule over the trainer's epochs."""
        optimizer = torch.optim.AdamW(self.parameters(), self.lr, weight_decay=self.weight_decay)
        epochs = max(1, int(self.trainer.max_epochs or 1))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def log_accuracy(module: L.LightningModule, kept: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Log `val_accuracy` of the epoch's (predicted, true) batches in `kept`, then clear it.

    Correct and validated rows are each summed over DDP ranks before dividing, as their
    shares may differ by one row.
    """
    predicted = torch.cat([p for p, _ in kept])
    labels = torch.cat([y for _, y in kept])
    kept.clear()
    validated = torch.tensor(len(labels), device=labels.device)  # NCCL reduces on the GPU
    counts = torch.stack([(predicted == labels).sum(), validated]).float()
    correct, total = module.trainer.strategy.reduce(counts, reduce_op="sum")
    # Every rank holds the same value now; sync_dist (a mean of equals) only tells
    # Lightning so, which otherwise warns about an unreduced epoch-level metric.
    module.log("val_accuracy", correct / total, prog_bar=True, sync_dist=True)


class PixelClassifier(nn.Module):
    """The deployable model: pixels in; top-class probability, all probabilities, embedding out.

    The embedding is the backbone's pooled features before its classifier (timm's
    `forward_head(..., pre_logits=True)`), for drift monitoring.
    """

    def __init__(self, classifier: ImageClassifier) -> None:
        super().__init__()
        self.normalize, self.backbone = classifier.normalize, classifier.backbone

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(n, h, w, 3) pixels → (n,) confidence, (n, classes) probabilities, (n, d) embedding."""
        backbone: Any = self.backbone  # a timm model: forward_features and forward_head
        features = backbone.forward_features(self.normalize(pixels))
        embedding = backbone.forward_head(features, pre_logits=True)
        probabilities = torch.softmax(backbone.forward_head(features), dim=1)
        return probabilities.max(dim=1).values, probabilities, embedding
