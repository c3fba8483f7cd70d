"""Tiny image datasets in the real layouts, and a registered, exported image model."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from modelcycle.data.flowers102 import Flowers102Source
from modelcycle.data.image_set import ImageSource
from modelcycle.data.rice import RiceSource
from modelcycle.data.signmnist import SignMNISTSource
from modelcycle.export import export_version
from modelcycle.models.image_classifier import timm_backbone
from modelcycle.pipeline import run_tags
from modelcycle.registry import Registry
from modelcycle.tasks.image import ImageTask
from modelcycle.tracking import Tracker
from modelcycle.training import TrainerSettings, fit

#: timm's smallest test network: trains in well under a second per epoch at 24 px.
TINY_BACKBONE = "test_resnet"
TINY_SIZE = 24


def tiny_sources(root: Path) -> dict[str, ImageSource]:
    """The three datasets as small synthetic stand-ins under `root`."""
    return {
        "rice": RiceSource(
            download_dir=root / "rice", synthetic=True, image_size=TINY_SIZE, per_class_synthetic=16
        ),
        "flowers102": Flowers102Source(
            download_dir=root / "flowers102",
            synthetic=True,
            image_size=TINY_SIZE,
            synthetic_classes=4,
            synthetic_per_split=[6, 3, 4],
        ),
        "signmnist": SignMNISTSource(
            download_dir=root / "signmnist",
            synthetic=True,
            image_size=TINY_SIZE,
            synthetic_per_class=[6, 3],
        ),
    }


def tiny_task(source: ImageSource) -> ImageTask:
    """The image task with timm's tiny test backbone."""
    encoder = partial(timm_backbone, name=TINY_BACKBONE, pretrained=False)
    return ImageTask(source, encoder, lr=0.01, batch_size=32, held_out_rows=12)


@dataclass(frozen=True)
class PublishedImage:
    """A workspace holding image@champion, version 1, exported."""

    root: Path
    registry: Registry


def publish_image(tmp: Path, tracker: Tracker, epochs: int = 0) -> PublishedImage:
    """Log a pipeline-shaped run with a tiny rice model (trained for `epochs`, untrained by
    default); register, promote, export."""
    task = tiny_task(tiny_sources(tmp / "data")["rice"])
    data, summary = task.load()
    fold = task.final_fold(data, seed=0)
    torch.manual_seed(0)
    module = task.model(data, fold)
    if epochs:
        settings = TrainerSettings(
            max_epochs=epochs, min_epochs=epochs, patience=epochs, progress_bar=False
        )
        fit(module, task.datamodule(data, fold, 0), settings, task.monitor, tmp / "ckpt", [])
    servable = task.servable(module, data, fold)
    with tracker.run("image_rice") as run_id:
        metric = task.primary_metric
        tracker.set_tags(run_tags(task, summary.data_hash))
        tracker.log_metrics({f"model_{metric}_mean": 0.6, f"baseline_{metric}_mean": 0.5})
        servable.save(tmp / "model")
        tracker.log_directory(tmp / "model", "model")
    registry = Registry(tracker.uri)
    version, _ = registry.register(run_id, "image")
    registry.promote("image")
    export_version(registry, f"image/{version.version}", tmp / "ws" / "exports")
    return PublishedImage(tmp / "ws", registry)
