"""Oxford Flowers-102 (Nilsback & Zisserman) through torchvision's `Flowers102`.

Layout under the root: `flowers-102/jpg/image_%05d.jpg`, `flowers-102/imagelabels.mat`
(1-based labels) and `flowers-102/setid.mat` (the official `trnid`/`valid`/`tstid` image ids).
torchvision checks the MD5 of both `.mat` files, which the offline stand-in (written with
scipy) cannot match; `LocalFlowers102` skips only that check.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelcycle.data.image_set import (
    SPLITS,
    ImageSet,
    ImageSource,
    counts_check,
    hash_files,
    read_image_files,
)
from modelcycle.data.image_set import subsample as subsample_rows
from modelcycle.data.openneuro import FetchError, FetchRecord, hash_tree, write_manifest
from modelcycle.data.tables import DataError
from modelcycle.kinds import Range
from modelcycle.messages import clause

log = logging.getLogger(__name__)

BASE = "flowers-102"
SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}
#: Stand-in class k has hue k % HUES and 3 + k // HUES petals: 17 hues × 6 petal counts make
#: 102 classes; six classes share each hue, and only their petals tell them apart.
HUES = 17


def _flowers102() -> type[Any]:
    from torchvision.datasets import Flowers102

    return Flowers102


def local_flowers102(root: Path, split: str) -> Any:
    """The torchvision `Flowers102` of a local copy, without the MD5 check of the `.mat` files.

    Everything else is torchvision's own code: the same paths, `.mat` parsing and labels.
    The folder and both files must still exist.
    """
    base_cls = _flowers102()

    class LocalFlowers102(base_cls):  # type: ignore[misc, valid-type]
        """`Flowers102` whose integrity check looks for the files but not their MD5."""

        def _check_integrity(self) -> bool:
            folder = self._base_folder
            return bool(
                self._images_folder.is_dir()
                and all((folder / self._file_dict[k][0]).is_file() for k in ("label", "setid"))
            )

    try:
        return LocalFlowers102(str(root), split=split)
    except RuntimeError as err:
        raise DataError(
            f"{root / BASE}: {clause(err)}. A Flowers-102 copy has jpg/, imagelabels.mat and "
            "setid.mat."
        ) from err


@dataclass
class Flowers102Source(ImageSource):
    """Flowers-102: a local copy, torchvision's download, or the synthetic stand-in.

    Args:
        synthetic_classes: Classes in the stand-in (the real dataset has 102).
        synthetic_per_split: Stand-in images per class in train, val and test.
    """

    dataset: ClassVar[str] = "flowers102"
    RANGES: ClassVar[dict[str, Range]] = {
        **ImageSource.RANGES,
        "synthetic_classes": (2, 103),
        "synthetic_per_split": (1, None),
    }
    CHECK = staticmethod(counts_check("synthetic_per_split", SPLITS))
    synthetic_classes: int = 102
    synthetic_per_split: list[int] = field(default_factory=lambda: [10, 10, 10])

    def present(self, target: Path) -> bool:
        """Whether `target/flowers-102` holds the images and both `.mat` files."""
        base = target / BASE
        return all(p.exists() for p in (base / "jpg", base / "imagelabels.mat", base / "setid.mat"))

    def fetch(self, target: Path) -> Path:
        """Download with torchvision (about 330 MB; torchvision checks the MD5s)."""
        return fetch_flowers102(target).root

    def synthesize(self, target: Path) -> Path:
        """Write the stand-in in the real layout."""
        return write_flowers_standin(
            target, self.synthetic_classes, tuple(self.synthetic_per_split), self.seed
        )

    def standin_spec(self) -> dict[str, Any]:
        """Classes, images per class and split, and the seed."""
        return {
            "synthetic_classes": self.synthetic_classes,
            "synthetic_per_split": list(self.synthetic_per_split),
            "seed": self.seed,
        }

    def read(self, root: Path) -> ImageSet:
        """The official train/val/test parts, each subsampled per class as configured."""
        paths: list[Path] = []
        labels: list[int] = []
        split: list[str] = []
        for name in SPLIT_KEYS:
            part = local_flowers102(root, name)
            y = np.asarray(part._labels)  # torchvision keeps them as its public API does not
            keep = subsample_rows(y, self.max_per_class, self.seed)
            paths += [Path(part._image_files[i]) for i in keep]
            labels += y[keep].tolist()
            split += [name] * len(keep)
        n_classes = max(labels) + 1
        classes = list(_flowers102().classes[:n_classes])
        files = [*paths, root / BASE / "imagelabels.mat", root / BASE / "setid.mat"]
        digest = hash_files(files)  # the labels too: an entry serves only this exact copy
        images = self.decoded(
            paths,
            digest,
            lambda: read_image_files(paths, self.image_size, "flowers102", self.background),
            "images",
        )
        return ImageSet(images, np.array(labels), classes, np.array(split), digest)


def fetch_flowers102(target: Path) -> FetchRecord:
    """Download Flowers-102 with torchvision and record the sha256 of every file."""
    try:
        _flowers102()(str(target), split="train", download=True)
    except Exception as err:  # urllib and torchvision raise many kinds
        raise FetchError(
            f"Could not download Flowers-102 into {target}: {clause(err)}. Check the network, or "
            "pass --synthetic (data.synthetic=true) for the offline stand-in."
        ) from err
    files = hash_tree(target, [f"{BASE}/*.mat", f"{BASE}/jpg/*"])
    record = FetchRecord("flowers102", None, target, files, datetime.now(UTC).isoformat())
    write_manifest(record)
    return record


def write_flowers_standin(
    root: Path, n_classes: int, per_split: tuple[int, ...], seed: int
) -> Path:
    """Flowers as petals around a centre on foliage; hue and petal count differ by class.

    Six classes share each hue (see `HUES`), so colour histograms alone cannot tell them apart.

    Writes `jpg/image_%05d.jpg`, `imagelabels.mat` (`labels`, 1-based, shape (1, n)) and
    `setid.mat` (`trnid`, `valid`, `tstid`, 1-based image ids), as the real files are.
    """
    from PIL import Image
    from scipy.io import savemat

    if not 2 <= n_classes <= 102 or len(per_split) != 3 or min(per_split) < 1:
        raise ValueError(
            f"n_classes={n_classes} must be 2..102 and per_split={per_split} three counts ≥ 1."
        )
    base = root / BASE
    (base / "jpg").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels: list[int] = []
    ids: dict[str, list[int]] = {key: [] for key in SPLIT_KEYS.values()}
    for key, count in zip(SPLIT_KEYS.values(), per_split, strict=True):
        for label in range(n_classes):
            for _ in range(count):
                labels.append(label + 1)
                ids[key].append(len(labels))
                path = base / "jpg" / f"image_{len(labels):05d}.jpg"
                Image.fromarray(_flower(rng, label)).save(path, quality=90)
    savemat(base / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    savemat(base / "setid.mat", {k: np.array([v], dtype=np.uint16) for k, v in ids.items()})
    return root


def _flower(rng: np.random.Generator, label: int, side: int = 96) -> np.ndarray:
    """One (side, side, 3) uint8 flower: class hue ± noise, 3–8 petals, random size and place."""
    import colorsys

    hue = (label % HUES / HUES + rng.normal(0, 0.012)) % 1.0
    petals = 3 + label // HUES
    rgb = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 0.9), rng.uniform(0.75, 1.0)))
    y, x = np.mgrid[:side, :side].astype(float)
    cy, cx = rng.normal(side / 2, side / 14, size=2)
    radius = side * rng.uniform(0.3, 0.42)
    theta = np.arctan2(y - cy, x - cx) + rng.uniform(0, 2 * np.pi)
    dist = np.hypot(y - cy, x - cx)
    petal = dist < radius * (0.35 + 0.65 * np.abs(np.cos(petals / 2 * theta)) ** 2)
    leaves = np.stack([0.15, 0.35 + 0.1 * rng.random(), 0.12], -1) * 255
    image = np.broadcast_to(leaves, (side, side, 3)) * rng.normal(1, 0.15, (side, side, 1))
    image = np.where(petal[..., None], rgb * 255 * rng.normal(1, 0.05, (side, side, 1)), image)
    image = np.where((dist < radius * 0.18)[..., None], np.array([230, 190, 40.0]), image)
    return np.clip(image, 0, 255).astype(np.uint8)
