"""Breast Cancer Semantic Segmentation (BCSS; Amgad et al., 2019) as Kaggle's tiles.

Kaggle `whats2000/breast-cancer-semantic-segmentation-bcss` (CC0, about 8.3 GB) cuts the 151
annotated regions of BCSS, one per TCGA slide, into tiles, in two variants:

- `BCSS/{train,val,test}/*.png`: 224×224 RGB tiles; masks of the same file name in
  `BCSS/train_mask/` and `BCSS/val_mask/` (the test tiles have none), with three values:
  0 other (everything else, outside the region included), 1 tumour (the original codes
  tumor, angioinvasion and dcis), 2 stroma.
- `BCSS_512/{train_512,val_512}/*.png`, masks in `BCSS_512/{train_mask_512,val_mask_512}/`:
  512×512 tiles whose masks keep BCSS's 22 codes, grouped here into the paper's main
  classes (tumour, stroma, inflammatory, necrosis, other); 0 (outside the region) and 7
  (excluded) belong to no class and are not scored.

A file name says where a tile comes from:
`TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0_448_2240_size224.png` is slide TCGA-A1-A0SK
(its patient), region origin (45749, 25055), tile offset (448, 2240). The 224 variant's own
train/val split is drawn per tile, so one region's tiles sit on both sides of it; folds here
pool the tiles that have masks and keep each slide's tiles in one part.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelcycle.data.cache import array_key
from modelcycle.data.image_set import (
    IGNORE,
    ImageSet,
    ImageSource,
    hash_files,
    map_files,
    read_image_files,
    subsample,
)
from modelcycle.data.kaggle import fetch_kaggle
from modelcycle.data.tables import DataError
from modelcycle.kinds import Range

log = logging.getLogger(__name__)

HANDLE = "whats2000/breast-cancer-semantic-segmentation-bcss"


@dataclass(frozen=True)
class Variant:
    """One tiling of BCSS: its folders, its classes and what each mask value means."""

    folder: str
    #: Image folder → mask folder, for the parts that have masks.
    parts: dict[str, str]
    #: Image folders without masks (skipped, counted in the notes).
    unlabelled: tuple[str, ...]
    classes: tuple[str, ...]
    #: Mask value → class index (or IGNORE); a value not listed is a data error.
    codes: dict[int, int]
    side: int


#: BCSS's 22 codes (meta/gtruth_codes.tsv of the BCSS repository), by the main class of the
#: paper's grouping they fall in.
_MAIN_CLASSES = {
    "tumor": (1, 19, 20),  # tumor, angioinvasion, dcis
    "stroma": (2,),
    "inflammatory": (3, 10, 11),  # lymphocytic infiltrate, plasma cells, other immune
    "necrosis": (4,),  # necrosis or debris
    "other": (5, 6, 8, 9, 12, 13, 14, 15, 16, 17, 18, 21),
}
VARIANTS = {
    224: Variant(
        "BCSS",
        {"train": "train_mask", "val": "val_mask"},
        ("test",),
        ("other", "tumor", "stroma"),
        {0: 0, 1: 1, 2: 2},
        224,
    ),
    512: Variant(
        "BCSS_512",
        {"train_512": "train_mask_512", "val_512": "val_mask_512"},
        (),
        tuple(_MAIN_CLASSES),
        {0: IGNORE, 7: IGNORE}
        | {code: i for i, codes in enumerate(_MAIN_CLASSES.values()) for code in codes},
        512,
    ),
}
#: The slide (TCGA patient) at the start of a tile's file name.
SLIDE = re.compile(r"^(TCGA-[A-Za-z0-9]{2}-[A-Za-z0-9]{4})")


@dataclass
class BCSSSource(ImageSource):
    """BCSS tiles and masks: a local copy, a kagglehub download, or the synthetic stand-in.

    Args:
        tile: 224 (three classes) or 512 (five main classes): which tiling; see the module.
        synthetic_slides: Slides in the stand-in.
        synthetic_tiles: Tiles per slide in the stand-in.
    """

    dataset: ClassVar[str] = "bcss"
    CHOICES: ClassVar[dict[str, tuple[int, ...]]] = {"tile": tuple(VARIANTS)}
    RANGES: ClassVar[dict[str, Range]] = {
        **ImageSource.RANGES,
        "synthetic_slides": (2, None),
        "synthetic_tiles": (1, None),
    }
    tile: int = 224
    synthetic_slides: int = 12
    synthetic_tiles: int = 10

    def __post_init__(self) -> None:
        if self.tile not in VARIANTS:
            listed = ", ".join(map(str, VARIANTS))
            raise DataError(f"data.tile={self.tile!r}: give one of {listed}.")

    @property
    def layout(self) -> Variant:
        """The tiling's folders and classes."""
        return VARIANTS[self.tile]

    def present(self, target: Path) -> bool:
        """Whether `target` holds this tiling's folder (or one folder down)."""
        return find_folder(target, self.layout.folder) is not None

    def fetch(self, target: Path) -> Path:
        """Download with kagglehub (about 8.3 GB: both variants)."""
        return fetch_kaggle(HANDLE, target).root

    def synthesize(self, target: Path) -> Path:
        """Write the stand-in, both variants, in the real layout."""
        return write_bcss_standin(target, self.synthetic_slides, self.synthetic_tiles, self.seed)

    def standin_spec(self) -> dict[str, Any]:
        """Slides, tiles per slide and the seed."""
        return {
            "synthetic_slides": self.synthetic_slides,
            "synthetic_tiles": self.synthetic_tiles,
            "seed": self.seed,
        }

    def read(self, root: Path) -> ImageSet:
        """Every tile that has a mask; masks mapped to class indices, resized (nearest)."""
        layout = self.layout
        folder = find_folder(root, layout.folder)
        if folder is None:
            raise DataError(
                f"{root / layout.folder} not found: a BCSS copy has {layout.folder}/"
                f"{'/, '.join(layout.parts)}/ and their mask folders. Point data.root at the "
                "folder that contains it."
            )
        images: list[Path] = []
        masks: list[Path] = []
        notes = []
        for part, mask_part in layout.parts.items():
            found = sorted((folder / part).glob("*.png"))
            missing = [p.name for p in found if not (folder / mask_part / p.name).is_file()]
            if missing:
                raise DataError(
                    f"{folder / mask_part}: no mask for {len(missing)} tile(s) of {part}/, "
                    f"e.g. {missing[0]}; every tile needs a mask of the same file name."
                )
            images += found
            masks += [folder / mask_part / p.name for p in found]
        for part in layout.unlabelled:
            if (n := len(list((folder / part).glob("*.png")))) > 0:
                notes.append(f"skipped {n} tiles of {part}/ (no masks)")
        if not images:
            raise DataError(f"{folder}: no tiles in {', '.join(layout.parts)}/.")
        mask_digest = hash_files(masks)
        label_maps = self.decoded(
            masks,
            mask_digest,
            lambda: read_masks(masks, self.image_size, layout),
            f"masks of the {self.tile} tiling",
        )
        majority = majority_class(label_maps, len(layout.classes))
        keep = subsample(majority, self.max_per_class, self.seed)
        if len(keep) < len(images):
            notes.append(f"kept {len(keep)} of {len(images)} tiles (data.max_per_class)")
        kept = [images[i] for i in keep]
        groups, unnamed = slides_of(kept)
        if unnamed:
            notes.append(f"{unnamed} tile name(s) name no TCGA slide: each is its own group")
        image_digest = hash_files(kept)
        pixels = self.decoded(
            kept,
            image_digest,
            lambda: read_image_files(kept, self.image_size, "bcss", self.background),
            "tiles",
        )
        notes.append(f"{len(set(groups))} slides; folds keep each slide's tiles together")
        return ImageSet(
            pixels,
            majority[keep],
            list(layout.classes),
            None,
            # the kept tiles, and every mask: the masks chose which tiles were kept
            array_key(image_digest, mask_digest),
            notes,
            masks=label_maps[keep],
            groups=groups,
        )


def find_folder(root: Path, name: str) -> Path | None:
    """`root/name`, or the one `root/*/name` (an archive unpacked into a folder of its own)."""
    if (root / name).is_dir():
        return root / name
    nested = [p for p in sorted(root.glob(f"*/{name}")) if p.is_dir()]
    return nested[0] if len(nested) == 1 else None


def read_masks(paths: list[Path], size: int, layout: Variant) -> np.ndarray:
    """(n, size, size) uint8 class indices of mask files, resized by nearest neighbour.

    Raises:
        DataError: A file that is not an image, or a value the variant does not define.
    """
    from PIL import Image, UnidentifiedImageError

    lookup = np.full(256, 254, dtype=np.uint8)  # 254: a value the variant does not define
    for code, index in layout.codes.items():
        lookup[code] = index

    def decode(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as image:
                values = np.asarray(image)
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"{path}: not a readable mask ({err}); remove or replace it.") from err
        if values.ndim == 3:  # saved as RGB: every channel holds the code
            values = values[..., 0]
        mapped = lookup[values]
        if (mapped == 254).any():
            bad = sorted(set(np.unique(values[mapped == 254]).tolist()))
            raise DataError(
                f"{path}: mask values {bad[:8]} are not codes of the {layout.folder} variant "
                f"({sorted(layout.codes)}); is data.tile right?"
            )
        return np.asarray(Image.fromarray(mapped).resize((size, size), Image.Resampling.NEAREST))

    out = np.empty((len(paths), size, size), dtype=np.uint8)
    for i, mask in enumerate(map_files(decode, paths, "bcss masks", "mask")):
        out[i] = mask
    return out


def majority_class(masks: np.ndarray, n_classes: int) -> np.ndarray:
    """(n,) the most frequent class of each mask, ignored pixels not counted (ties: lowest)."""
    counts = np.stack([(masks == c).sum(axis=(1, 2)) for c in range(n_classes)], axis=1)
    return counts.argmax(axis=1)


def slides_of(paths: list[Path]) -> tuple[np.ndarray, int]:
    """The TCGA slide of each tile, from its file name; a name without one is its own group.

    Returns:
        The group names and how many names had no slide.
    """
    groups, unnamed = [], 0
    for path in paths:
        match = SLIDE.match(path.name)
        if match is None:
            unnamed += 1
        groups.append(match.group(1) if match else path.stem)
    return np.array(groups), unnamed


# ---- the offline stand-in ------------------------------------------------------------------

#: Stand-in tissue, by 224-variant class: background RGB, nucleus RGB, nuclei per 1,000 px.
#: Tumour and stroma share their mean colour roughly; what tells them apart is nuclei density
#: and texture, as in H&E, so a per-pixel colour rule confuses them where a network need not.
_TISSUE = {
    0: ((238, 226, 236), (110, 70, 150), 0.6),  # other: pale (fat, glass), few cells
    1: ((222, 154, 196), (78, 38, 122), 9.0),  # tumour: dense dark nuclei
    2: ((226, 148, 186), (96, 52, 136), 1.2),  # stroma: pink fibres, sparse nuclei
}


def write_bcss_standin(root: Path, slides: int, tiles: int, seed: int) -> Path:
    """Tiles and masks of `slides` slides in both real layouts and file naming.

    224 variant: each slide's `tiles` tiles are dealt per tile into train (70 %), val (15 %)
    and test (15 %, no masks), as the real split is drawn. 512 variant: one tile per slide,
    its mask in BCSS's 22 codes (each stand-in class drawn as one of its codes, a border
    outside the region coded 0), slides dealt into train_512 and val_512.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    small, large = VARIANTS[224], VARIANTS[512]
    for part in (*small.parts, *small.parts.values(), *small.unlabelled):
        (root / small.folder / part).mkdir(parents=True, exist_ok=True)
    for part in (*large.parts, *large.parts.values()):
        (root / large.folder / part).mkdir(parents=True, exist_ok=True)
    # Stand-in class → BCSS codes it is drawn as, one per tile: "other" tissue stands for
    # inflammatory (3) and necrosis (4) regions too, so that all five main classes occur.
    codes_512 = {0: (9, 3, 4, 5, 13), 1: (1, 20), 2: (2,)}
    for s in range(slides):
        slide = f"TCGA-{chr(65 + s % 26)}{s % 10}-A{s:03d}-DX1"
        x0, y0 = (int(v) for v in rng.integers(10_000, 90_000, size=2))
        stain = rng.normal(1, 0.05, size=3)  # slides differ in staining
        for t in range(tiles):
            row, col = 224 * (t // 4), 224 * (t % 4)
            name = f"{slide}_xmin{x0}_ymin{y0}_MPP-0_{row}_{col}_size224.png"
            labels = _label_field(rng, 224)
            part = rng.choice(["train", "val", "test"], p=[0.7, 0.15, 0.15])
            Image.fromarray(_render(rng, labels, stain)).save(root / small.folder / part / name)
            if part != "test":
                Image.fromarray(labels).save(root / small.folder / small.parts[part] / name)
        part = "train_512" if s % 3 else "val_512"
        name = f"{slide}_xmin{x0}_ymin{y0}_MPP-0_0_0_size512.png"
        labels = _label_field(rng, 512)
        codes = np.zeros_like(labels)
        for cls, options in codes_512.items():
            codes[labels == cls] = rng.choice(options)
        codes[:, :24] = 0  # outside the annotated region
        Image.fromarray(_render(rng, labels, stain)).save(root / large.folder / part / name)
        Image.fromarray(codes).save(root / large.folder / large.parts[part] / name)
    return root


def _label_field(rng: np.random.Generator, side: int) -> np.ndarray:
    """(side, side) uint8 classes 0-2 in smooth blobs: argmax of three smoothed noise fields."""
    from scipy.ndimage import gaussian_filter, zoom

    bias = rng.normal(0, 0.6, size=3)  # tiles differ in what dominates them
    # Smoothed at an eighth of the side, then enlarged: the same blobs, 50× less filtering.
    coarse = side // 8
    noise = [gaussian_filter(rng.normal(size=(coarse, coarse)), coarse / 12) for _ in range(3)]
    fields = [zoom(field, side / coarse, order=1) for field in noise]
    scaled = np.stack([f / (f.std() + 1e-9) + b for f, b in zip(fields, bias, strict=True)])
    return scaled.argmax(axis=0).astype(np.uint8)


def _render(rng: np.random.Generator, labels: np.ndarray, stain: np.ndarray) -> np.ndarray:
    """An H&E-like (side, side, 3) uint8 tile for a label map: tissue colour, fibres, nuclei."""
    from scipy.ndimage import gaussian_filter

    side = labels.shape[0]
    background = np.zeros((side, side, 3))
    for cls, (colour, _, _) in _TISSUE.items():
        background[labels == cls] = colour
    y, x = np.mgrid[:side, :side].astype(float)
    angle = rng.uniform(0, np.pi)
    fibres = np.sin((x * np.cos(angle) + y * np.sin(angle)) / 2.5)
    background[labels == 2] *= (1 + 0.06 * fibres[labels == 2])[:, None]
    background *= rng.normal(1, 0.03, size=(side, side, 1))  # grain
    pixels = background
    for cls, (_, nucleus, per_1000) in _TISSUE.items():
        area = (labels == cls).sum()
        n = rng.poisson(per_1000 * area / 1000)
        ys, xs = np.nonzero(labels == cls)
        if not n or not len(ys):
            continue
        pick = rng.integers(len(ys), size=n)
        for cy, cx in zip(ys[pick], xs[pick], strict=True):
            r = rng.uniform(1.5, 3.5) * side / 224
            lo_y, hi_y = max(0, int(cy - r - 1)), min(side, int(cy + r + 2))
            lo_x, hi_x = max(0, int(cx - r - 1)), min(side, int(cx + r + 2))
            yy, xx = y[lo_y:hi_y, lo_x:hi_x], x[lo_y:hi_y, lo_x:hi_x]
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            pixels[lo_y:hi_y, lo_x:hi_x][disk] = nucleus
    pixels = gaussian_filter(pixels, sigma=(0.6, 0.6, 0)) * stain
    return np.clip(pixels, 0, 255).astype(np.uint8)
