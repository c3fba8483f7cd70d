"""Image classification data in memory: fixed-size RGB pixels, labels, class names, splits.

Every image dataset (rice, Flowers-102, Sign Language MNIST) is read into one `ImageSet`:
images resized to `image_size` × `image_size` RGB uint8, so that the same code trains,
evaluates, computes baselines and drift features on all three.
"""

from __future__ import annotations

import hashlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelcycle.data.cache import array_key, cached_array
from modelcycle.data.standin import check_root, standin_root
from modelcycle.data.tables import DataError
from modelcycle.kinds import Range

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: Mask value of a pixel that belongs to no class (outside the annotated region): not scored.
IGNORE = 255
#: Part of every decoded-image cache key: change it when decoding or resizing changes.
#: 2: JPEGs upright by EXIF, 16-bit grayscale scaled; 3: transparency composited (`as_shown`).
DECODE_VERSION = "decode-3"
#: Background a transparent image is composited onto unless its dataset says otherwise.
WHITE = (255, 255, 255)
#: Threads that read files (`map_files`); None: one per core the process may use, up to 8.
READ_THREADS: int | None = None


@dataclass(frozen=True)
class ImageSet:
    """Images with labels, rows aligned.

    Attributes:
        images: (n, size, size, 3) uint8 RGB.
        labels: (n,) class index into `classes`.
        classes: Class names, in label order.
        split: (n,) "train"/"val"/"test" when the dataset has an official split, else None.
        data_hash: sha256 over the files read.
        notes: What was skipped or subsampled, for the report.
        masks: (n, size, size) uint8 class index per pixel (`IGNORE`: no class), for
            segmentation; `labels` then holds each image's most frequent class.
        groups: (n,) what images must stay together in one split part (the slide a tile
            was cut from), or None when images are independent.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    split: np.ndarray | None = None
    data_hash: str = ""
    notes: list[str] = field(default_factory=list)
    masks: np.ndarray | None = None
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> dict[str, int]:
        """Images per class name."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, counts, strict=True)}


@dataclass
class ImageSource(ABC):
    """Where an image dataset comes from: a local copy, a download, or a synthetic stand-in.

    Args:
        root: A local copy in the dataset's real layout.
        download_dir: Where to download to (or write the stand-in to) when `root` is not given.
        synthetic: Write and use an offline stand-in in the real layout instead of downloading
            (in `download_dir`: refused beside `root`).
        image_size: Side in pixels every image is resized to.
        max_per_class: Keep at most this many images per class and split (seeded), or all.
        seed: Seed of the subsampling and of the stand-in.
        cache_dir: Where decoded images are kept by content address (the files' sha256 and
            the size), so that a second run decodes nothing; None decodes every time.
    """

    root: Path | None = None
    download_dir: Path = Path(".modelcycle/data/images")
    synthetic: bool = False
    image_size: int = 64
    max_per_class: int | None = None
    seed: int = 0
    cache_dir: Path | None = None

    #: Short dataset name used in messages and in `modelcycle data fetch`.
    dataset: ClassVar[str] = "images"
    #: RGB behind the dataset's subjects: what a transparent pixel is composited onto in
    #: training and in service (it goes into the served model's `info`).
    background: ClassVar[tuple[int, ...]] = WHITE
    #: Checked when the config is assembled, before anything is read or written.
    RANGES: ClassVar[dict[str, Range]] = {"image_size": (1, None), "max_per_class": (1, None)}

    def resolve_root(self) -> Path:
        """The local copy: `root`, else the stand-in (written once), else a download."""
        if self.root is not None:
            root = Path(self.root).expanduser()
            check_root(root, self.dataset, self.synthetic)
            if not root.is_dir():
                raise DataError(
                    f"data.root={root} is not a directory. Point it at a copy of {self.dataset} "
                    "in its real layout, or leave it empty to download it."
                )
            return root
        target = Path(self.download_dir)

        def write() -> Path:
            log.info("Writing the synthetic %s stand-in to %s", self.dataset, target)
            return self.synthesize(target)

        present = self.present(target)
        standin = standin_root(
            target, self.dataset, self.standin_spec(), self.synthetic, present, write
        )
        if standin is not None:
            return standin
        if present:
            return target
        return self.fetch(target)

    def load(self) -> ImageSet:
        """Read the dataset, resized, subsampled as configured."""
        return self.read(self.resolve_root())

    def decoded(
        self, paths: Sequence[Path], digest: str, decode: Callable[[], np.ndarray], what: str
    ) -> np.ndarray:
        """`decode()`'s array for files whose bytes hash to `digest`, through the cache.

        Args:
            paths: The files decoded (counted in the log).
            digest: sha256 over their bytes (the data hash, or a part of it).
            decode: Reads and resizes them.
            what: What they are ("images", "masks"); with the size it keys the entry.
        """
        key = array_key(DECODE_VERSION, self.dataset, what, str(self.image_size), digest)
        label = f"{len(paths)} {self.dataset} {what} at {self.image_size} px"
        cache = Path(self.cache_dir) if self.cache_dir is not None else None
        return cached_array(cache, key, decode, label)

    @abstractmethod
    def present(self, target: Path) -> bool:
        """Whether `target` already holds the dataset."""

    @abstractmethod
    def fetch(self, target: Path) -> Path:
        """Download the real dataset into `target`; returns its root."""

    @abstractmethod
    def synthesize(self, target: Path) -> Path:
        """Write the offline stand-in in the real layout into `target`; returns its root."""

    @abstractmethod
    def standin_spec(self) -> dict[str, Any]:
        """The settings `synthesize` draws the stand-in with, by config key (seed, sizes)."""

    @abstractmethod
    def read(self, root: Path) -> ImageSet:
        """Read a local copy in the real layout."""


def counts_check(key: str, parts: Sequence[str]) -> Callable[[dict[str, Any]], None]:
    """A source's `CHECK` that `key` holds one count per part (`RANGES` bounds each count)."""

    def check(values: dict[str, Any]) -> None:
        counts = values.get(key)
        if isinstance(counts, list) and len(counts) != len(parts):
            raise ValueError(
                f"{key}={counts!r}: give {len(parts)} counts, the stand-in's images per class "
                f"in {', '.join(parts[:-1])} and {parts[-1]}."
            )

    return check


def read_image_files(
    paths: Sequence[Path], size: int, desc: str, background: tuple[int, ...] = WHITE
) -> np.ndarray:
    """Decode image files to (n, size, size, 3) uint8 RGB, on every core, with a progress bar.

    Transparent pixels are composited onto `background` (`as_shown`).

    Raises:
        DataError: A file that is not a readable image, named.
    """
    from PIL import Image, UnidentifiedImageError

    def decode(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as image:
                return resize_rgb(as_shown(image, background), size)
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"{path}: not a readable image ({err}); remove or replace it.") from err

    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, pixels in enumerate(map_files(decode, paths, desc, "img")):
        out[i] = pixels
    return out


def map_files(
    function: Callable[[Path], np.ndarray], paths: Sequence[Path], desc: str, unit: str
) -> Iterator[np.ndarray]:
    """`function` of each path, in order, computed in a thread per core.

    Decoding a PNG or JPEG lets go of the GIL for most of its time: two threads read BCSS
    tiles 1.75× as fast as one on two cores. A progress bar shows from 500 files on. The
    first error raised (in path order) ends the map, and files not started are skipped.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    workers = READ_THREADS or max(1, min(len(os.sched_getaffinity(0)), 8))
    pool = ThreadPoolExecutor(workers, thread_name_prefix=f"read-{desc}")
    try:
        results = pool.map(function, paths)
        yield from tqdm(results, total=len(paths), desc=desc, unit=unit, disable=len(paths) < 500)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def as_shown(image: Any, background: tuple[int, ...] = WHITE) -> Any:
    """A PIL image as RGB, the way a viewer shows it; training and serving both read so.

    A JPEG is turned upright by its EXIF orientation (a phone's portrait photo is stored
    sideways with a tag saying so; phones' JPEGs open as MPO). A 16-bit grayscale image
    (PNG) is scaled to 8 bits: Pillow's `convert("RGB")` clips it at 255, so a normal
    16-bit scan became white. Transparent pixels are composited onto `background`:
    `convert("RGB")` dropped the alpha, showing whatever colour an editor left under it
    (often black).
    """
    from PIL import Image, ImageOps

    if image.format in ("JPEG", "MPO"):
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.round(np.clip(values, 0, 65535) / 257).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        behind = Image.new("RGBA", image.size, (*background, 255))
        image = Image.alpha_composite(behind, image.convert("RGBA"))
    return image if image.mode == "RGB" else image.convert("RGB")


def resize_rgb(image: object, size: int) -> np.ndarray:
    """One PIL image as (size, size, 3) uint8 RGB (bilinear, aspect not kept)."""
    from PIL import Image

    assert isinstance(image, Image.Image)
    rgb = image if image.mode == "RGB" else image.convert("RGB")  # a converted one: no copy
    return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR))


def hash_files(paths: Sequence[Path]) -> str:
    """One sha256 over the files' bytes, in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def subsample(labels: np.ndarray, max_per_class: int | None, seed: int) -> np.ndarray:
    """Sorted indices keeping at most `max_per_class` rows of each label (seeded)."""
    if max_per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:max_per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep)) if keep else np.arange(0)


def stratified_holdout(
    labels: np.ndarray, rows: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split `rows` into (kept, held out) with about `fraction` of each class held out.

    Every class with at least two rows gives up at least one, so each class is scored.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction={fraction} must be strictly between 0 and 1.")
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels[rows]):
        members = rng.permutation(rows[labels[rows] == c])
        n = min(len(members) - 1, max(1, round(fraction * len(members))))
        held.append(members[:n])
    held_rows = np.concatenate(held) if held else np.arange(0)
    return np.setdiff1d(rows, held_rows), np.sort(held_rows)


def stratified_kfold(labels: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """`n_folds` disjoint test parts, each class dealt round-robin after a seeded shuffle."""
    counts = np.bincount(labels)
    if n_folds < 2 or n_folds > counts[counts > 0].min():
        raise DataError(
            f"cv.n_folds={n_folds}: give between 2 and the smallest class size "
            f"({counts[counts > 0].min()}), or cv.n_folds=1 for one stratified holdout."
        )
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), dtype=int)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        fold_of[members] = (np.arange(len(members)) + rng.integers(n_folds)) % n_folds
    return [np.flatnonzero(fold_of == k) for k in range(n_folds)]


def official_rows(split: np.ndarray, name: str) -> np.ndarray:
    """Row indices of one official split part."""
    if name not in SPLITS:
        raise ValueError(f"split part {name!r} must be one of {SPLITS}.")
    return np.flatnonzero(split == name)
