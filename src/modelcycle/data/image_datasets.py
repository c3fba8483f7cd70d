"""The image datasets by name (BCSS's tiles among them), for `modelcycle data fetch NAME`."""

from __future__ import annotations

from modelcycle.data.bcss import BCSSSource
from modelcycle.data.flowers102 import Flowers102Source
from modelcycle.data.image_set import ImageSource
from modelcycle.data.rice import RiceSource
from modelcycle.data.signmnist import SignMNISTSource

IMAGE_SOURCES: dict[str, type[ImageSource]] = {
    cls.dataset: cls for cls in (RiceSource, Flowers102Source, SignMNISTSource, BCSSSource)
}
