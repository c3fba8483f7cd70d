"""Sign Language MNIST (Kaggle `datamunge/sign-language-mnist`).

Two CSVs, `sign_mnist_train.csv` and `sign_mnist_test.csv` (also inside folders of the same
names), with columns `label,pixel1..pixel784`: 28×28 grayscale hands. Labels are letters
A=0 … Y=24 without J=9 (and Z), which need motion: 24 classes. The official test CSV is the
test set. The training CSV was made by augmenting a few source images, so a validation part
carved from it holds near-copies of training rows: validation accuracy overstates test
accuracy, and only the test CSV's numbers mean anything.
"""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from modelcycle.data.image_set import ImageSet, ImageSource, counts_check, hash_files, subsample
from modelcycle.data.kaggle import fetch_kaggle
from modelcycle.data.tables import DataError
from modelcycle.kinds import Range

log = logging.getLogger(__name__)

HANDLE = "datamunge/sign-language-mnist"
FILES = {"train": "sign_mnist_train.csv", "test": "sign_mnist_test.csv"}
SIDE = 28
LETTERS = [c for c in string.ascii_uppercase[:25] if c != "J"]  # label 0..24 without 9
LABELS = [string.ascii_uppercase.index(c) for c in LETTERS]


@dataclass
class SignMNISTSource(ImageSource):
    """Sign Language MNIST: a local copy, a kagglehub download, or the synthetic stand-in.

    Args:
        synthetic_per_class: Stand-in rows per letter in the train and test CSVs.
    """

    dataset: ClassVar[str] = "signmnist"
    RANGES: ClassVar[dict[str, Range]] = {**ImageSource.RANGES, "synthetic_per_class": (1, None)}
    CHECK = staticmethod(counts_check("synthetic_per_class", tuple(FILES)))
    synthetic_per_class: list[int] = field(default_factory=lambda: [20, 8])

    def present(self, target: Path) -> bool:
        """Whether both CSVs are in `target` (or in their folders)."""
        return all(_csv(target, name) is not None for name in FILES.values())

    def fetch(self, target: Path) -> Path:
        """Download with kagglehub (about 60 MB)."""
        return fetch_kaggle(HANDLE, target).root

    def synthesize(self, target: Path) -> Path:
        """Write both CSVs in the real format."""
        return write_signmnist_standin(target, tuple(self.synthetic_per_class), self.seed)

    def standin_spec(self) -> dict[str, Any]:
        """Images per letter and split, and the seed."""
        return {"synthetic_per_class": list(self.synthetic_per_class), "seed": self.seed}

    def read(self, root: Path) -> ImageSet:
        """Both CSVs; the training CSV is `train`, the test CSV is the official `test`."""
        images, labels, split, paths = [], [], [], []
        for part, name in FILES.items():
            path = _csv(root, name)
            if path is None:
                raise DataError(
                    f"{name} not found in {root} or {root / Path(name).stem}; a Sign Language "
                    "MNIST copy has sign_mnist_train.csv and sign_mnist_test.csv."
                )
            x, y = read_signmnist_csv(path)
            keep = subsample(y, self.max_per_class, self.seed)
            images.append(_to_rgb(x[keep], self.image_size))
            labels.append(y[keep])
            split += [part] * len(keep)
            paths.append(path)
        index = {label: i for i, label in enumerate(LABELS)}
        y_all = np.array([index[v] for v in np.concatenate(labels)])
        return ImageSet(
            np.concatenate(images), y_all, list(LETTERS), np.array(split), hash_files(paths)
        )


def _csv(root: Path, name: str) -> Path | None:
    for path in (root / name, root / Path(name).stem / name):
        if path.is_file():
            return path
    return None


def read_signmnist_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28) uint8 pixels and (n,) letter labels (0..24 without 9) of one CSV.

    Raises:
        DataError: Missing columns, an empty or non-numeric cell (a cut-off file), pixels
            outside 0..255 or a label that is not a letter.
    """
    table = pd.read_csv(path)
    expected = ["label", *(f"pixel{i}" for i in range(1, SIDE * SIDE + 1))]
    if list(table.columns) != expected:
        missing = [c for c in expected if c not in table.columns][:3]
        raise DataError(
            f"{path}: columns must be label,pixel1..pixel784; missing e.g. {missing}, "
            f"found {list(table.columns[:3])}…"
        )
    # NaN passes the range check below and casts to 0..255 garbage: name the first bad row
    # a column pandas could not read as numbers holds text
    text = not all(pd.api.types.is_numeric_dtype(kind) for kind in table.dtypes)
    numbers = table.apply(pd.to_numeric, errors="coerce") if text else table
    blank = numbers.isna().any(axis=1).to_numpy()
    if blank.any():
        line = int(np.flatnonzero(blank)[0]) + 2  # 1-based, after the header line
        raise DataError(
            f"{path}: line {line} has empty or non-numeric cells (a cut-off or damaged file); "
            "download it again, or fix or remove that row."
        )
    labels = table["label"].to_numpy()
    bad = sorted(set(labels.tolist()) - set(LABELS))
    if bad:
        raise DataError(
            f"{path}: label(s) {bad[:5]} are not letters 0..24 without 9 (J); fix the file."
        )
    pixels = table.iloc[:, 1:].to_numpy()
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{path}: pixel values must lie in 0..255.")
    return pixels.astype(np.uint8).reshape(-1, SIDE, SIDE), labels


def _to_rgb(gray: np.ndarray, size: int) -> np.ndarray:
    """(n, 28, 28) grayscale to (n, size, size, 3) RGB uint8 (bilinear)."""
    import torch
    from torch.nn import functional as F

    x = torch.from_numpy(gray).float()[:, None]
    if size != SIDE:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    rgb = x.round().clamp(0, 255).to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1)
    return rgb.contiguous().numpy()


def write_signmnist_standin(root: Path, per_class: tuple[int, ...], seed: int) -> Path:
    """Both CSVs: a palm with fingers whose directions encode the letter, lit from the side."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    columns = ["label", *(f"pixel{i}" for i in range(1, SIDE * SIDE + 1))]
    for (_, name), count in zip(FILES.items(), per_class, strict=True):
        rows = [
            [label, *_hand(rng, k).reshape(-1).tolist()]
            for k, label in enumerate(LABELS)
            for _ in range(count)
        ]
        order = rng.permutation(len(rows))
        pd.DataFrame([rows[i] for i in order], columns=columns).to_csv(root / name, index=False)
    return root


def _hand(rng: np.random.Generator, k: int) -> np.ndarray:
    """One (28, 28) uint8 hand for class index `k`: fingers are the bits of k + 1."""
    y, x = np.mgrid[:SIDE, :SIDE].astype(float)
    cy, cx = 17 + rng.normal(0, 1.0), 14 + rng.normal(0, 1.0)
    hand = ((y - cy) / 5.5) ** 2 + ((x - cx) / 6.5) ** 2 <= 1
    for bit in range(5):
        if (k + 1) >> bit & 1:
            angle = np.pi * (0.15 + 0.175 * bit) + rng.normal(0, 0.08)
            ux, uy = -np.cos(angle), -np.sin(angle)
            t = (x - cx) * ux + (y - cy) * uy
            d = np.abs((x - cx) * uy - (y - cy) * ux)
            hand |= (t > 3) & (t < 14 + rng.normal(0, 1)) & (d < 1.6)
    light = 120 + 80 * x / SIDE + rng.normal(0, 10)
    background = rng.uniform(40, 110)
    image = np.where(hand, light, background) + rng.normal(0, 8, (SIDE, SIDE))
    return np.clip(image, 0, 255).astype(np.uint8)
