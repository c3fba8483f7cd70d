"""Rice varieties (Koklu et al.; Kaggle `muratkokludataset/rice-image-dataset`).

Layout: `Rice_Image_Dataset/<Class>/<Class> (i).jpg`, five classes of 15,000 250×250 JPEGs,
one grain on black. Two quirks of the real files are handled: Basmati's files are lowercase
(`basmati (i).jpg`), and `Rice_Citation_Request.txt` sits beside the class folders. There is
no official split.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelcycle.data.image_set import (
    ImageSet,
    ImageSource,
    hash_files,
    read_image_files,
    subsample,
)
from modelcycle.data.kaggle import fetch_kaggle
from modelcycle.data.tables import DataError
from modelcycle.kinds import Range

log = logging.getLogger(__name__)

HANDLE = "muratkokludataset/rice-image-dataset"
FOLDER = "Rice_Image_Dataset"
CITATION = "Rice_Citation_Request.txt"
IMAGE_SIDE = 250
#: Files read as images in a class folder (any case): those the decoder reads.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: Stand-in grains per variety: (length px, width px, RGB). Areas are about equal and
#: colours close, so that, as in the real images, the shape (length-to-width ratio) tells
#: varieties apart more than brightness or colour; sizes and shades vary per grain, so
#: neighbouring varieties overlap.
VARIETIES: dict[str, tuple[float, float, tuple[int, int, int]]] = {
    "Arborio": (105, 66, (228, 224, 206)),
    "Basmati": (175, 40, (232, 226, 204)),
    "Ipsala": (130, 54, (236, 232, 222)),
    "Jasmine": (155, 45, (230, 228, 214)),
    "Karacadag": (90, 78, (222, 214, 192)),
}


@dataclass
class RiceSource(ImageSource):
    """The rice images: a local copy, a kagglehub download, or the synthetic stand-in."""

    dataset: ClassVar[str] = "rice"
    #: Every grain is photographed on black: a cut-out grain's transparency is the same.
    background: ClassVar[tuple[int, ...]] = (0, 0, 0)
    RANGES: ClassVar[dict[str, Range]] = {**ImageSource.RANGES, "per_class_synthetic": (1, None)}
    per_class_synthetic: int = 60

    def present(self, target: Path) -> bool:
        """Whether `target` holds `Rice_Image_Dataset/`."""
        return (target / FOLDER).is_dir()

    def fetch(self, target: Path) -> Path:
        """Download with kagglehub (about 220 MB)."""
        return fetch_kaggle(HANDLE, target).root

    def synthesize(self, target: Path) -> Path:
        """Write `per_class_synthetic` grains per variety in the real layout."""
        return write_rice_standin(target, self.per_class_synthetic, self.seed)

    def standin_spec(self) -> dict[str, Any]:
        """Grains per variety and the seed."""
        return {"per_class_synthetic": self.per_class_synthetic, "seed": self.seed}

    def read(self, root: Path) -> ImageSet:
        """Every image (`IMAGE_SUFFIXES`) in each class folder; anything else is skipped.

        Hidden entries (`.ipynb_checkpoints`, `.DS_Store`) are no classes.

        Raises:
            DataError: No `Rice_Image_Dataset/`, a class folder without images (a class
                the model could neither learn nor be scored on), or fewer than 2 classes.
        """
        folder = root / FOLDER
        if not folder.is_dir():
            raise DataError(
                f"{folder} not found: a rice copy has Rice_Image_Dataset/<Class>/*.jpg. "
                "Point data.root at the folder that contains it."
            )
        classes, paths, labels, notes, empty = [], [], [], [], []
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                notes.append(f"skipped {entry.name} (hidden)")
                continue
            if not entry.is_dir():
                notes.append(f"skipped {entry.name} (not a class folder)")
                continue
            files = sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                empty.append(entry.name)
            classes.append(entry.name)
            paths += files
            labels += [len(classes) - 1] * len(files)
        if empty:
            raise DataError(
                f"{folder}: class folder(s) {', '.join(empty)} hold no images "
                f"({', '.join(IMAGE_SUFFIXES)}); add images or remove the folder(s)."
            )
        if len(classes) < 2:
            raise DataError(f"{folder}: found {len(classes)} class folder(s), need at least 2.")
        y = np.array(labels)
        keep = subsample(y, self.max_per_class, self.seed)
        kept = [paths[i] for i in keep]
        digest = hash_files(kept)
        images = self.decoded(
            kept,
            digest,
            lambda: read_image_files(kept, self.image_size, "rice", self.background),
            "images",
        )
        return ImageSet(images, y[keep], classes, None, digest, notes)


def write_rice_standin(root: Path, per_class: int, seed: int) -> Path:
    """Grains as textured, rotated ellipses on black, in the real layout and naming."""
    from PIL import Image

    folder = root / FOLDER
    rng = np.random.default_rng(seed)
    for name, (length, width, colour) in VARIETIES.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        stem = name.lower() if name == "Basmati" else name  # the real files' quirk
        for i in range(1, per_class + 1):
            pixels = _grain(rng, length, width, colour)
            Image.fromarray(pixels).save(folder / name / f"{stem} ({i}).jpg", quality=90)
    (folder / CITATION).write_text("Cite: Koklu, M., Cinar, I. & Taspinar, Y. S. (2021).\n")
    return root


def _grain(
    rng: np.random.Generator, length: float, width: float, colour: tuple[int, int, int]
) -> np.ndarray:
    """One (250, 250, 3) uint8 grain; size ±12%, shade ±8% per grain, texture per pixel."""
    a = length / 2 * rng.normal(1, 0.12)
    b = width / 2 * rng.normal(1, 0.12)
    angle = rng.uniform(0, np.pi)
    cy, cx = rng.normal(IMAGE_SIDE / 2, 8, size=2)
    y, x = np.mgrid[:IMAGE_SIDE, :IMAGE_SIDE].astype(float)
    u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
    r = (u / a) ** 2 + (v / b) ** 2
    shade = np.clip(1.05 - 0.35 * r, 0, 1) * rng.normal(1, 0.08)  # darker towards the rim
    texture = rng.normal(1, 0.06, size=(IMAGE_SIDE, IMAGE_SIDE))
    grain = (r <= 1) * shade * texture
    pixels = grain[..., None] * np.array(colour, dtype=float)[None, None, :]
    return np.clip(pixels, 0, 255).astype(np.uint8)
