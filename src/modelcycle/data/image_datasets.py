"""The image datasets by name (BCSS's tiles among them), for `modelcycle data fetch NAME`."""

from __future__ import annotations

from pathlib import Path

from modelcycle.data.bcss import BCSSSource
from modelcycle.data.flowers102 import Flowers102Source
from modelcycle.data.image_set import ImageSource
from modelcycle.data.rice import RiceSource
from modelcycle.data.signmnist import SignMNISTSource

IMAGE_SOURCES: dict[str, type[ImageSource]] = {
    cls.dataset: cls for cls in (RiceSource, Flowers102Source, SignMNISTSource, BCSSSource)
}


def fetch_images(name: str, target: Path, synthetic: bool) -> Path:
    """Download image dataset `name` into `target`, or write its offline stand-in there.

    Returns:
        The dataset's root (already present data is reused, never downloaded twice).
    """
    source = IMAGE_SOURCES[name](download_dir=target, synthetic=synthetic)
    return source.resolve_root()
