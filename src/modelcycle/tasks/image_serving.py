"""Serving image classifiers: a JPEG or PNG in, the top-k classes with probabilities out.

An image arrives as the raw body (`Content-Type: image/jpeg` or `image/png`), as the file
of a `multipart/form-data` upload, or base64-encoded in JSON (`{"image": "..."}`). Before
decoding, the header's width × height is checked against `MAX_PIXELS`, so a small file that
would decompress to gigabytes (a decompression bomb) is refused without being decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from modelcycle.data.image_set import WHITE, as_shown
from modelcycle.serving.adapter import ClassifierAdapter, RequestError, UnsupportedMediaError

MAX_PIXELS = 25_000_000  # 5000 × 5000; real rice and flower photos are well under 1 Mpx
#: Fewest pixels an image may have a side: a 1×1 image, resized, was answered with confidence.
MIN_SIDE = 8
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32) / np.float32(255.0)  # ITU-R 601
SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}


class ImageRequest(BaseModel):
    """One image, base64-encoded JPEG or PNG bytes."""

    model_config = ConfigDict(extra="forbid")

    # No length of its own: serve.body_limit bounds the body before it is parsed. A bound
    # here (it was 2 MB) refused a large JSON image the limit let through, and said more
    # than the limit (1 MB by default) in the schema.
    image: str = Field(
        description="Base64 of a JPEG or PNG file; the whole body at most serve.body_limit bytes"
    )


class ImageServing(ClassifierAdapter):
    """Adapter of the image task; `info` holds `classes`, `image_size`, `top_k`, `background`.

    `background` is the RGB a transparent pixel is composited onto, as in training (white
    for models saved without it).

    Robustness shifts: darkening (every pixel times 1-s) and Gaussian blur (sigma s pixels);
    the held-out metric is top-1 accuracy on the saved held-out images.
    """

    request_type = ImageRequest
    byte_types = ("image/jpeg", "image/png")
    shift_sizes: ClassVar[dict[str, tuple[float, ...]]] = {
        "darken": (0.1, 0.2, 0.4),
        "blur": (0.5, 1.0, 2.0),
    }
    decode_in_thread = True  # decoding and resizing a photo takes milliseconds

    def __init__(self, info: dict[str, Any]) -> None:
        super().__init__(info)
        self.size = int(info["image_size"])
        self.background = tuple(info.get("background", WHITE))

    def image_input(self) -> dict[str, Any] | None:
        """Every image is resized to `size` × `size`, transparency onto `background`."""
        return {"side": self.size, "background": list(self.background)}

    def decode(self, request: BaseModel) -> list[np.ndarray]:
        """The base64 image, decoded and resized: [(1, size, size, 3) uint8].

        A data URL (`data:image/png;base64,...`, what a browser's FileReader gives) is taken
        too: its prefix is dropped.
        """
        assert isinstance(request, ImageRequest)
        text = request.image
        if text.startswith("data:") and ";base64," in text[:100]:
            text = text.split(";base64,", 1)[1]
        text = _plain_base64(text)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as err:
            raise RequestError(
                f"image: not valid base64 ({err}); send base64 of the file."
            ) from err
        return self.decode_bytes(data)

    def decode_bytes(self, data: bytes) -> list[np.ndarray]:
        """A JPEG or PNG file's bytes, decoded and resized: [(1, size, size, 3) uint8]."""
        return [decode_image(data, self.size, background=self.background)[None]]

    def drift_features(self, inputs: list[np.ndarray]) -> dict[str, float]:
        """Brightness, contrast, sharpness and colour means of the decoded image."""
        return image_features(inputs[0])

    def shift(
        self, inputs: list[np.ndarray], kind: str, size: float, seed: int
    ) -> list[np.ndarray]:
        """The (n, h, w, 3) uint8 images darkened by a share `size` or blurred by sigma `size`."""
        self.check_shift(kind)
        return [shift_images(inputs[0], kind, size)]

    def examples(
        self, held_out: list[np.ndarray], target: np.ndarray | None
    ) -> list[dict[str, Any]]:
        """Held-out images of different classes as base64 PNG requests."""
        labels = self.info.get("held_out_labels") or [""] * len(held_out[0])
        examples = []
        for n, (pixels, label) in enumerate(zip(held_out[0][:6], labels, strict=False)):
            examples.append(
                {
                    "id": f"example-{n + 1}",
                    "label": f"{label} (held out)",
                    "request": {"image": base64.b64encode(png_bytes(pixels)).decode()},
                }
            )
        return examples


def decode_image(
    data: bytes,
    size: int,
    max_pixels: int = MAX_PIXELS,
    background: tuple[int, ...] = WHITE,
) -> np.ndarray:
    """JPEG/PNG bytes → (size, size, 3) uint8 RGB, transparency composited onto `background`.

    Raises:
        UnsupportedMediaError: Neither a JPEG nor a PNG signature (HTTP 415).
        RequestError: A corrupt or truncated file, or more than `max_pixels` pixels (HTTP 422).
    """
    from modelcycle.data.image_set import resize_rgb

    return resize_rgb(open_image(data, max_pixels, background), size)


def _plain_base64(text: str) -> str:
    """Base64 as `b64decode(validate=True)` takes it, from the forms people send.

    `base64 file` and Python's `encodebytes` wrap lines; the URL-safe alphabet uses - and _;
    JavaScript's encoders may drop the padding. All were refused as "not valid base64".
    """
    if any(c in text for c in " \n\r\t"):
        text = "".join(text.split())
    if "-" in text or "_" in text:
        text = text.translate(_URL_SAFE)
    return text + "=" * (-len(text) % 4)


_URL_SAFE = str.maketrans("-_", "+/")


def open_image(
    data: bytes, max_pixels: int = MAX_PIXELS, background: tuple[int, ...] = WHITE
) -> Any:
    """JPEG/PNG bytes → a decoded RGB PIL image, its size checked before it is decoded.

    Turned upright by its EXIF orientation (a phone's portrait photo is stored sideways
    with a tag saying so: browsers show it upright, and its answer's mask follows that); a
    16-bit grayscale PNG is scaled to 8 bits; transparent pixels are composited onto
    `background` (RGB), as training reads its files (`as_shown`).

    Raises:
        UnsupportedMediaError: Neither a JPEG nor a PNG signature (HTTP 415).
        RequestError: A corrupt or truncated file, or more than `max_pixels` pixels (HTTP 422).
    """
    import warnings

    from PIL import Image

    if not data:
        raise RequestError("The image is empty (0 bytes); send a JPEG or PNG file.")
    kind = next((name for sig, name in SIGNATURES.items() if data.startswith(sig)), None)
    if kind is None:
        raise UnsupportedMediaError(
            f"The file starts with {data[:8]!r}, not a JPEG or PNG signature; send a JPEG or PNG."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size  # read from the header; nothing is decoded yet
            if width * height > max_pixels:
                raise RequestError(
                    f"{kind} of {width}×{height} = {width * height:,} pixels is over the "
                    f"{max_pixels:,}-pixel limit (a decompression bomb?); send a smaller image."
                )
            if min(width, height) < MIN_SIDE:
                raise RequestError(
                    f"{kind} of {width}×{height} pixels: too small to show anything; send an "
                    f"image of at least {MIN_SIDE} pixels a side."
                )
            image.load()
            _refuse_invisible(image, kind)
            return as_shown(image, background)
    except (
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as err:
        if isinstance(err, RequestError):
            raise
        if isinstance(err, Image.DecompressionBombError | Image.DecompressionBombWarning):
            # Pillow's own limit (89 Mpx), met at opening, before the header is ours to read
            raise RequestError(
                f"{kind} over the {max_pixels:,}-pixel limit ({err}); send a smaller image."
            ) from err
        # Pillow's "cannot identify image file <_io.BytesIO object at 0x7f0a…>": an address
        why = "Pillow cannot read it" if isinstance(err, Image.UnidentifiedImageError) else err
        raise RequestError(f"The {kind} file is corrupt or truncated ({why}).") from err


def _refuse_invisible(image: Any, kind: str) -> None:
    """Raise `RequestError` for an image whose every pixel is fully transparent.

    Its colours are what an editor left under the transparency (often black): nothing a
    viewer shows, yet the model answered them with confidence.
    """
    if image.mode in ("RGBA", "LA", "PA"):  # the alpha band's range, without a copy
        most_opaque = image.getextrema()[-1][1]
    elif "transparency" in image.info:  # a transparent colour or palette entry (tRNS)
        most_opaque = image.convert("RGBA").getextrema()[-1][1]
    else:
        return
    if most_opaque == 0:
        raise RequestError(
            f"The {kind} is fully transparent: no pixel is visible; send the image with "
            "visible pixels (or without its alpha channel)."
        )


def png_bytes(pixels: np.ndarray) -> bytes:
    """(h, w, 3) uint8 pixels as a PNG file."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def image_features(pixels: np.ndarray) -> dict[str, float]:
    """Drift features of (1, h, w, 3) uint8 pixels, each scaled to about 0..1.

    brightness: mean luminance; contrast: its standard deviation; sharpness: the standard
    deviation of its Laplacian (blur lowers it); red/green/blue: channel means.

    Runs on every served image, so it avoids float copies of the whole image: luminance and
    the channel sums are matrix products straight from uint8 (a third of the CPU of
    converting first; the sums are exact up to 2**24 / 255 ≈ 65,000 pixels).
    """
    flat = pixels[0].reshape(-1, 3)
    luminance = (flat @ _LUMA).reshape(pixels.shape[1:3])
    laplacian = luminance[:-2, 1:-1] + luminance[2:, 1:-1]
    laplacian += luminance[1:-1, :-2]
    laplacian += luminance[1:-1, 2:]
    laplacian -= 4 * luminance[1:-1, 1:-1]
    means = (np.ones(len(flat), dtype=np.float32) @ flat) / (len(flat) * 255.0)
    return {
        "brightness": float(luminance.mean()),
        "contrast": float(luminance.std()),
        "sharpness": float(laplacian.std()),
        "red": float(means[0]),
        "green": float(means[1]),
        "blue": float(means[2]),
    }


def shift_images(pixels: np.ndarray, kind: str, size: float) -> np.ndarray:
    """(n, h, w, 3) uint8 images darkened (times 1-size) or blurred (Gaussian, sigma=size px)."""
    from scipy.ndimage import gaussian_filter

    images = pixels.astype(np.float32)
    if kind == "darken":
        images *= 1 - size
    elif kind == "blur":
        images = gaussian_filter(images, sigma=(0, size, size, 0))
    else:
        raise ValueError(f"unknown shift {kind!r}")
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)
