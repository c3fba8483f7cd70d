"""Serving segmentation models: a JPEG or PNG tile in, a mask and each class's share out.

Requests arrive as for image classifiers (raw body, multipart upload or base64 in JSON) and
are decoded, checked and described for drift the same way. The answer's `mask` is a PNG in
palette mode: each pixel's value is its class index (read it with any PNG reader), and the
palette draws the classes in `PALETTE`'s colours. The model sees the tile resized to its
input size; the mask comes back at the tile's own size (`size`, height and width), from the
class probabilities resized bilinearly (up to `SMOOTH_PIXELS`) or the model's mask resized
to the nearest pixel (larger tiles).

A region larger than the training tiles (`info["tile"]` pixels a side, e.g. 224) would be
squashed into one model input, at a magnification the model never saw (2×2 tiles: mean Dice
0.69 against 0.94): it is cut into windows of the training tile's size (the last row and
column aligned to the edge, overlapping), each seen as a training tile was, and their masks
joined.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from modelcycle.serving.adapter import SHARE, Rows, object_schema
from modelcycle.tasks.image_serving import ImageServing, image_features, open_image, png_bytes

#: Colours of the classes in masks drawn for people (the served mask, plots), in class order.
PALETTE = (
    (0xE6, 0xE6, 0xE6),  # light grey
    (0xC2, 0x18, 0x5B),  # magenta
    (0xF5, 0xA6, 0x23),  # orange
    (0x2E, 0x7D, 0x32),  # green
    (0x1E, 0x88, 0xE5),  # blue
    (0x6A, 0x1B, 0x9A),  # purple
    (0x00, 0x89, 0x7B),  # teal
    (0x79, 0x55, 0x48),  # brown
)
#: Mask value of a pixel that belongs to no class (as `modelcycle.data.image_set.IGNORE`).
IGNORE = 255
#: Tiles of up to this many pixels get a mask resized from the class probabilities (smooth
#: borders; 4 bytes per class and pixel); larger ones the model's mask resized to the nearest
#: pixel (1 byte per pixel).
SMOOTH_PIXELS = 1024 * 1024
#: A side longer than this many training tiles is cut into windows (up to it: one input).
WINDOW_FROM = 1.5


class SegmentationServing(ImageServing):
    """Adapter of the segmentation task; `info` holds `classes` and `image_size`.

    Robustness shifts are the image task's (darkening, blur); the held-out metric is the
    mean Dice over classes on the saved held-out tiles and their masks.
    """

    held_out_metric_name = "mean Dice"
    encode_in_thread = True  # resizing probabilities and writing a PNG take milliseconds

    def __init__(self, info: dict[str, Any]) -> None:
        super().__init__(info)
        self.tile: int | None = info.get("tile")  # absent from models saved before windows

    def image_input(self) -> dict[str, Any] | None:
        """None for a model that cuts large regions into windows.

        Shrunk whole, a region would be seen at a magnification the model never met.
        """
        return None if self.tile else super().image_input()

    def decode_bytes(self, data: bytes) -> list[np.ndarray]:
        """The tile resized to the model's size, [(n, size, size, 3) uint8], and its own size.

        n is 1, or the number of windows a region larger than the training tiles is cut into
        (`windows`; their places go to `encode` in the context).
        """
        from modelcycle.data.image_set import resize_rgb

        image = open_image(data, background=self.background)
        context: dict[str, Any] = {"height": image.height, "width": image.width}
        boxes = windows(image.height, image.width, self.tile)
        if len(boxes) == 1:
            return Rows([resize_rgb(image, self.size)[None]], context)
        pixels = np.stack(
            [resize_rgb(image.crop((x, y, x + w, y + h)), self.size) for y, x, h, w in boxes]
        )
        return Rows([pixels], context | {"windows": boxes})

    def drift_features(self, inputs: list[np.ndarray]) -> dict[str, float]:
        """The image task's features, averaged over the windows of a large region."""
        each = [image_features(window[None]) for window in inputs[0]]
        return {k: float(np.mean([f[k] for f in each])) for k in each[0]}

    def encode(
        self, outputs: dict[str, np.ndarray], context: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The mask as a palette PNG, each class's share of its pixels, the mean confidence.

        The mask has the tile's size when `context` gives it (`decode_bytes` does), else
        the model's.
        """
        probabilities = outputs["probabilities"]
        height, width = probabilities.shape[2:]
        if context is not None:
            height, width = int(context["height"]), int(context["width"])
        boxes = (context or {}).get("windows") or [(0, 0, height, width)]
        mask = np.empty((height, width), dtype=np.uint8)
        for (y, x, h, w), window in zip(boxes, probabilities, strict=True):
            mask[y : y + h, x : x + w] = class_mask(window, h, w)  # overlaps: the later one
        confidence = outputs["confidence"].reshape(len(boxes), -1)[:, 0]
        areas = np.array([h * w for _, _, h, w in boxes], dtype=np.float64)
        shares = np.bincount(mask.reshape(-1), minlength=len(self.classes)) / mask.size
        order = np.argsort(-shares, kind="stable")
        return {
            "class_shares": [{"class": self.classes[i], "share": float(shares[i])} for i in order],
            "confidence": float(confidence @ areas / areas.sum()),
            "mask": base64.b64encode(mask_png(mask)).decode(),
            "size": list(mask.shape),
            "classes": self.classes,
            "colours": [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in palette(len(self.classes))],
        }

    def answer_schema(self, shapes: dict[str, list[Any]]) -> dict[str, Any]:
        """The mask, each class's share of it, the confidence, and how to draw it (`encode`)."""
        n = len(self.classes)
        share = object_schema({"class": self.class_schema(), "share": SHARE})
        side = {"type": "integer", "minimum": 1}
        return object_schema(
            {
                "class_shares": {
                    "type": "array",
                    "items": share,
                    "minItems": n,
                    "maxItems": n,
                    "description": "Each class's share of the mask's pixels, largest first",
                },
                "confidence": SHARE
                | {"description": "The mean over pixels of the top class's probability"},
                "mask": {
                    "type": "string",
                    "contentEncoding": "base64",
                    "contentMediaType": "image/png",
                    "description": "A palette PNG of the tile's size: each pixel's class index",
                },
                "size": {
                    "type": "array",
                    "items": side,
                    "minItems": 2,
                    "maxItems": 2,
                    "description": "The mask's height and width, in pixels",
                },
                "classes": {
                    "type": "array",
                    "items": self.class_schema(),
                    "minItems": n,
                    "maxItems": n,
                    "description": "The class of each mask value, in order",
                },
                "colours": {
                    "type": "array",
                    "items": {"type": "string", "pattern": "^#[0-9a-f]{6}$"},
                    "minItems": n,
                    "maxItems": n,
                    "description": "The palette's colour of each class, in order",
                },
            }
        )

    def held_out_metric(self, outputs: dict[str, np.ndarray], target: np.ndarray | None) -> float:
        """Mean Dice over classes of the argmax masks against the held-out masks (`target`)."""
        if target is None or target.ndim != 3:
            raise ValueError("the model was saved without held-out masks; re-register it.")
        predicted = outputs["probabilities"].argmax(axis=1)
        return mean_dice(predicted, target, len(self.classes))

    def examples(
        self, held_out: list[np.ndarray], target: np.ndarray | None
    ) -> list[dict[str, Any]]:
        """Held-out tiles as base64 PNG requests, labelled with their true class shares."""
        examples = []
        for n, pixels in enumerate(held_out[0][:6]):
            label = "held out"
            if target is not None and target.ndim == 3:
                truth = target[n][target[n] != IGNORE]
                shares = np.bincount(truth, minlength=len(self.classes)) / max(truth.size, 1)
                top = np.argsort(-shares, kind="stable")[:2]
                label = ", ".join(f"{self.classes[i]} {shares[i]:.0%}" for i in top)
                label += " (held out)"
            examples.append(
                {
                    "id": f"example-{n + 1}",
                    "label": label,
                    "request": {"image": base64.b64encode(png_bytes(pixels)).decode()},
                }
            )
        return examples


def windows(height: int, width: int, tile: int | None) -> list[tuple[int, int, int, int]]:
    """(y, x, h, w) boxes covering a height × width image with training-tile windows.

    One box, the whole image, unless a side is longer than `WINDOW_FROM` tiles; then windows
    of `tile` pixels (a side shorter than a tile: the whole side), the last of each row and
    column aligned to the image's edge.
    """
    if tile is None or max(height, width) <= WINDOW_FROM * tile:
        return [(0, 0, height, width)]

    def starts(side: int) -> list[int]:
        if side <= tile:
            return [0]
        return sorted({*range(0, side - tile, tile), side - tile})

    h, w = min(height, tile), min(width, tile)
    return [(y, x, h, w) for y in starts(height) for x in starts(width)]


def class_mask(probabilities: np.ndarray, height: int, width: int) -> np.ndarray:
    """(height, width) uint8 classes of (classes, h, w) probabilities resized to that size.

    The probability maps are resized bilinearly, as the tile was on its way in, and then the
    most probable class taken; above `SMOOTH_PIXELS`, the classes are resized instead (nearest
    pixel), which keeps the memory at a byte per pixel.
    """
    from PIL import Image

    if probabilities.shape[1:] == (height, width):
        return probabilities.argmax(axis=0).astype(np.uint8)
    if height * width > SMOOTH_PIXELS:
        small = Image.fromarray(probabilities.argmax(axis=0).astype(np.uint8))
        return np.asarray(small.resize((width, height), Image.Resampling.NEAREST))
    maps = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(p, dtype=np.float32)).resize(
                (width, height), Image.Resampling.BILINEAR
            )
        )
        for p in probabilities
    ]
    return np.argmax(maps, axis=0).astype(np.uint8)


def palette(n: int) -> list[tuple[int, int, int]]:
    """The colours of `n` classes: `PALETTE`, repeated when there are more classes."""
    return [PALETTE[i % len(PALETTE)] for i in range(n)]


def mask_png(mask: np.ndarray) -> bytes:
    """(h, w) uint8 class indices as a palette-mode PNG whose pixel values are the indices."""
    from PIL import Image

    image = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
    colours = palette(256)
    colours[IGNORE] = (0, 0, 0)
    image.putpalette([channel for colour in colours for channel in colour])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def mean_dice(predicted: np.ndarray, truth: np.ndarray, n_classes: int) -> float:
    """Mean over classes of Dice, every pixel pooled; `IGNORE` pixels, absent classes left out."""
    dice = dice_per_class(pixel_confusion(predicted, truth, n_classes))
    return float(np.nanmean(dice)) if np.isfinite(dice).any() else float("nan")


def pixel_confusion(predicted: np.ndarray, truth: np.ndarray, n: int) -> np.ndarray:
    """(n, n) pixel counts, rows the true class, columns the predicted; `IGNORE` left out."""
    t = truth.reshape(-1).astype(np.int64)
    p = predicted.reshape(-1).astype(np.int64)
    keep = t != IGNORE
    return np.bincount(t[keep] * n + p[keep], minlength=n * n).reshape(n, n)


def dice_per_class(matrix: np.ndarray) -> np.ndarray:
    """Each class's Dice from a pixel confusion matrix; NaN for a class neither true nor guessed."""
    hits = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, 2 * hits / union, np.nan)
