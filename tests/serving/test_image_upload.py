"""Serving an image model through TestClient: uploads, limits and errors, real ONNX Runtime."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from image_fixtures import PublishedImage, publish_image
from modelcycle.monitoring.capture import CaptureStore
from modelcycle.serving.app import ServeSettings, create_app
from modelcycle.serving.loading import ServedModel, load_served
from modelcycle.tasks.image_serving import ImageRequest, ImageServing
from modelcycle.tracking import Tracker, TrackingSettings
from serving_fixtures import documented_answer

PREDICT = "/v1/models/image/predict"
IMAGE_PNG = {"content-type": "image/png"}


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> PublishedImage:
    tmp = tmp_path_factory.mktemp("image-served")
    return publish_image(tmp, Tracker(TrackingSettings(), tmp / "ws"))


@pytest.fixture(scope="module")
def served_image(
    published: PublishedImage, tmp_path_factory: pytest.TempPathFactory
) -> ServedModel:
    cache = tmp_path_factory.mktemp("cache")
    return load_served(published.registry, "image@champion", cache, threads=1)


@pytest.fixture
def store(tmp_path: Path) -> CaptureStore:
    return CaptureStore(tmp_path / "capture.db")


@pytest.fixture
def client(served_image: ServedModel, store: CaptureStore) -> Iterator[TestClient]:
    with TestClient(create_app(lambda: [served_image], ServeSettings(), store)) as c:
        yield c


def encoded(pixels: np.ndarray, kind: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind)
    return buffer.getvalue()


def grain(side: int = 60) -> np.ndarray:
    y, x = np.mgrid[:side, :side]
    inside = ((y - side / 2) / (side / 3)) ** 2 + ((x - side / 2) / (side / 8)) ** 2 <= 1
    return (inside[..., None] * np.array([230, 225, 200])).astype(np.uint8)


def test_raw_jpeg_gives_top_k_with_probabilities_and_version(
    client: TestClient, served_image: ServedModel
) -> None:
    data = encoded(grain(), "JPEG")
    response = client.post(PREDICT, content=data, headers={"content-type": "image/jpeg"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "image" and body["version"] == "1"
    top = body["outputs"]["top_k"]
    assert [t["class"] for t in top] != [] and len(top) == 5
    probabilities = [t["probability"] for t in top]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6
    assert body["outputs"]["class"] == top[0]["class"]
    # the same answer as the ONNX session on the decoded pixels
    rows = served_image.adapter.decode_bytes(data)
    assert rows[0].shape == (1, 24, 24, 3) and rows[0].dtype == np.uint8
    _, expected, _ = served_image.run(rows)
    assert probabilities[0] == pytest.approx(float(expected.max()), abs=1e-6)


def test_png_multipart_and_base64_json_give_the_same_answer(client: TestClient) -> None:
    png = encoded(grain(), "PNG")
    raw = client.post(PREDICT, content=png, headers={"content-type": "image/png"})
    form = client.post(PREDICT, files={"file": ("grain.png", png, "image/png")})
    as_json = client.post(PREDICT, json={"image": base64.b64encode(png).decode()})
    assert raw.status_code == form.status_code == as_json.status_code == 200, form.text
    assert raw.json()["outputs"] == form.json()["outputs"] == as_json.json()["outputs"]
    # a browser's data URL, as FileReader.readAsDataURL gives it
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    as_url = client.post(PREDICT, json={"image": url})
    assert as_url.status_code == 200, as_url.text
    assert as_url.json()["outputs"] == raw.json()["outputs"]
    # `base64 file` wraps its lines, URL-safe base64 uses - and _, JavaScript may not pad:
    # each was "not valid base64"
    wrapped = base64.encodebytes(png).decode()
    url_safe = base64.urlsafe_b64encode(png).decode().rstrip("=")
    assert "\n" in wrapped and ("-" in url_safe or "_" in url_safe)
    for text in (wrapped, url_safe):
        answer = client.post(PREDICT, json={"image": text})
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"] == raw.json()["outputs"]
    bad = client.post(PREDICT, json={"image": "not base64 at all!"})
    assert bad.status_code == 422 and "not valid base64" in bad.json()["detail"]


@pytest.mark.parametrize(
    "content_type",
    [
        "image/jpg",
        "image/pjpeg",
        "image/x-png",
        "application/octet-stream",
        # curl --data-binary @grain.png without -H: it was refused 415
        "application/x-www-form-urlencoded",
    ],
)
def test_a_file_under_another_name_for_its_type_is_read_by_its_signature(
    client: TestClient, content_type: str
) -> None:
    # The web page sends application/octet-stream for a file the browser has no type for
    png = encoded(grain(), "PNG")
    expected = client.post(PREDICT, content=png, headers=IMAGE_PNG).json()["outputs"]
    answer = client.post(PREDICT, content=png, headers={"content-type": content_type})
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"] == expected
    text = client.post(PREDICT, content=b"just text", headers={"content-type": content_type})
    assert text.status_code == 415, text.text


def _sideways_jpeg() -> bytes:
    """A portrait photo (40 high, 20 wide, white band on top) stored as a phone stores it:
    sideways, with EXIF Orientation 6 (rotate 90° clockwise to view)."""
    upright = np.zeros((40, 20, 3), np.uint8)
    upright[:10] = 255
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # 20 high, 40 wide
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif, quality=95)
    return buffer.getvalue()


def _ramp_png() -> tuple[bytes, np.ndarray]:
    """A 16-bit grayscale PNG of a ramp over the whole range, and the ramp."""
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    assert Image.open(io.BytesIO(buffer.getvalue())).mode.startswith("I")
    return buffer.getvalue(), ramp


def test_a_jpeg_is_turned_upright_by_its_exif_orientation() -> None:
    # A phone's portrait photo is stored sideways with Orientation 6: it was read sideways
    from modelcycle.tasks.image_serving import open_image

    opened = np.asarray(open_image(_sideways_jpeg()))
    assert opened.shape == (40, 20, 3)
    assert opened[:8].mean() > 200 and opened[12:].mean() < 50


def test_a_16_bit_grayscale_png_is_scaled_not_clipped() -> None:
    # Pillow's convert("RGB") clipped 16-bit values at 255: a mid-grey scan became white
    from modelcycle.tasks.image_serving import open_image

    data, ramp = _ramp_png()
    opened = np.asarray(open_image(data))
    assert opened.shape == (64, 64, 3) and opened.dtype == np.uint8
    expected = np.round(ramp / 257).astype(np.uint8)
    assert np.abs(opened[..., 0].astype(int) - expected).max() <= 1
    assert opened[..., 0].min() == 0 and opened[..., 0].max() == 255


def _cut_out_png() -> tuple[bytes, np.ndarray]:
    """An RGBA PNG: a grey square, half opaque at one corner, on transparent pixels holding
    black (what editors leave there), and its RGB composited onto white."""
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[4:12, 4:12] = (200, 100, 50, 255)
    rgba[0, 0] = (0, 0, 255, 128)
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    composited = np.full((16, 16, 3), 255, np.uint8)
    composited[4:12, 4:12] = (200, 100, 50)
    composited[0, 0] = (127, 127, 255)  # half of blue over half of white
    return buffer.getvalue(), composited


def test_a_transparent_png_is_composited_onto_the_background() -> None:
    # The alpha was dropped: the transparent pixels read as the black they held
    from modelcycle.tasks.image_serving import open_image

    data, white = _cut_out_png()
    assert np.abs(np.asarray(open_image(data)).astype(int) - white).max() <= 1
    on_black = np.asarray(open_image(data, background=(0, 0, 0)))
    assert on_black[15, 15].tolist() == [0, 0, 0] and on_black[8, 8].tolist() == [200, 100, 50]
    palette = Image.open(io.BytesIO(data)).convert("P")  # transparency as a palette entry
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", transparency=palette.getpixel((15, 15)))
    assert np.asarray(open_image(buffer.getvalue()))[15, 15].tolist() == [255, 255, 255]


def test_a_served_model_composites_onto_its_datasets_background(
    served_image: ServedModel,
) -> None:
    # rice grains are photographed on black: a cut-out grain's transparency is black too
    data, _ = _cut_out_png()
    adapter = served_image.adapter
    assert isinstance(adapter, ImageServing) and adapter.info["background"] == [0, 0, 0]
    pixels = adapter.decode(ImageRequest(image=base64.b64encode(data).decode()))[0]
    assert pixels[0, -1, -1].tolist() == [0, 0, 0]
    assert ImageServing(adapter.info | {"background": [255, 255, 255]}).decode_bytes(data)[0][
        0, -1, -1
    ].tolist() == [255, 255, 255]


def test_training_reads_image_files_as_the_server_reads_uploads(tmp_path: Path) -> None:
    # Training read a phone's photo sideways and a 16-bit scan white, while the server
    # turned the same files upright and scaled: the model met other pixels in service.
    from modelcycle.data.image_set import read_image_files
    from modelcycle.tasks.image_serving import decode_image

    files = {
        "portrait.jpg": _sideways_jpeg(),
        "scan.png": _ramp_png()[0],
        "cut-out.png": _cut_out_png()[0],
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    read = read_image_files([tmp_path / name for name in files], 16, "test")
    for pixels, data in zip(read, files.values(), strict=True):
        assert np.array_equal(pixels, decode_image(data, 16))
    assert read[0][:3].mean() > 200 and read[0][-6:].mean() < 50  # upright: the band on top
    assert 100 < read[1].mean() < 155  # a ramp from black to white, not white
    assert read[2][-1, -1].tolist() == [255, 255, 255]  # transparency composited, not black


def test_examples_are_held_out_images_that_predict(client: TestClient) -> None:
    examples = client.get("/v1/models/image/examples").json()["examples"]
    assert len(examples) == 6 and examples[0]["label"].endswith("(held out)")
    assert examples[0]["label"].split(" (")[0] in {
        "Arborio",
        "Basmati",
        "Ipsala",
        "Jasmine",
        "Karacadag",
    }
    response = client.post(PREDICT, json=examples[0]["request"])
    assert response.status_code == 200, response.text
    (model,) = client.get("/v1/models").json()["models"]
    assert model["request_parts"] == []  # an image is one whole: nothing to pick apart
    # what a client needs to shrink a photo the model resizes anyway
    assert model["image_input"] == {"side": 24, "background": [0, 0, 0]}


def test_the_openapi_document_lists_the_file_types_and_an_example(client: TestClient) -> None:
    body = client.get("/openapi.json").json()["paths"]["/v1/models/{name}/predict"]["post"]
    content = body["requestBody"]["content"]
    assert list(content) == ["application/json", "image/jpeg", "image/png", "multipart/form-data"]
    assert content["image/png"]["schema"] == {"type": "string", "format": "binary"}
    assert content["multipart/form-data"]["schema"]["required"] == ["file"]
    example = content["application/json"]["examples"]["image"]["value"]
    assert client.post(PREDICT, json=example).status_code == 200


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (
            b"hello",
            "text/plain",
            "application/json, image/jpeg, image/png, application/octet-stream or multipart",
        ),
        (b"GIF89a" + bytes(20), "image/gif", "not 'image/gif'"),
        (b"GIF89a" + bytes(20), "image/png", "not a JPEG or PNG signature"),
    ],
)
def test_wrong_type_is_415(
    client: TestClient, body: bytes, content_type: str, message: str
) -> None:
    response = client.post(PREDICT, content=body, headers={"content-type": content_type})
    assert response.status_code == 415 and message in response.json()["detail"]


def test_text_file_uploaded_as_multipart_is_415(client: TestClient) -> None:
    response = client.post(PREDICT, files={"file": ("notes.txt", b"just text", "text/plain")})
    assert response.status_code == 415, response.text


def test_corrupt_and_truncated_images_are_422(client: TestClient) -> None:
    jpeg = encoded(grain(), "JPEG")
    for body, kind in [
        (b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, "image/png"),
        (jpeg[: len(jpeg) // 2], "image/jpeg"),
        (b"\x89PNG\r\n\x1a\n", "image/png"),  # the signature alone
    ]:
        response = client.post(PREDICT, content=body, headers={"content-type": kind})
        assert response.status_code == 422, response.text
        assert "corrupt or truncated" in response.json()["detail"]
        assert "object at 0x" not in response.json()["detail"]  # Pillow's repr of a BytesIO


def _bomb_png(side: int, draw: bool = True) -> bytes:
    """A valid grayscale PNG of side × side zeros: tiny on the wire, huge decoded.

    Without `draw`, the pixel data are left out (a reader that stops at the header cannot
    tell).
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    pixels = zlib.compress(bytes(side + 1) * side if draw else b"", 9)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_422_without_decoding(client: TestClient) -> None:
    bomb = _bomb_png(6000)  # 36 Mpx, about 35 KB
    assert len(bomb) < 100_000
    response = client.post(PREDICT, content=bomb, headers={"content-type": "image/png"})
    assert response.status_code == 422
    assert "36,000,000 pixels is over the 25,000,000-pixel limit" in response.json()["detail"]
    # past Pillow's own limit (89 Mpx) Pillow refuses at opening: the same answer, not "corrupt"
    for side in (12_000, 14_000):  # Pillow warns past 89 Mpx and refuses past 179 Mpx
        huge = client.post(PREDICT, content=_bomb_png(side, draw=False), headers=IMAGE_PNG)
        assert huge.status_code == 422, huge.text
        assert "over the 25,000,000-pixel limit" in huge.json()["detail"]
        assert "corrupt" not in huge.json()["detail"]


def test_an_empty_image_is_named_empty(client: TestClient) -> None:
    for body in (b"", base64.b64encode(b"").decode()):
        if isinstance(body, bytes):
            response = client.post(PREDICT, content=body, headers=IMAGE_PNG)
        else:
            response = client.post(PREDICT, json={"image": body})
        assert response.status_code == 422, response.text
        assert "The image is empty (0 bytes)" in response.json()["detail"]


def test_an_image_with_nothing_to_see_is_refused(client: TestClient) -> None:
    # a 1×1 image, or one whose every pixel is transparent, got a confident class
    def post(pixels: np.ndarray, **save: Any) -> Any:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", **save)
        return client.post(PREDICT, content=buffer.getvalue(), headers=IMAGE_PNG)

    tiny = post(grain()[:1, :1])
    assert tiny.status_code == 422 and "PNG of 1×1 pixels: too small" in tiny.json()["detail"]
    assert "at least 8 pixels a side" in tiny.json()["detail"]
    assert post(grain()[:7, :60]).status_code == 422
    assert post(grain()[20:28, 20:28]).status_code == 200  # 8 px a side is taken
    rgba = np.dstack([grain(), np.zeros((60, 60), np.uint8)])  # colours under no alpha
    clear = post(rgba)
    assert clear.status_code == 422 and "fully transparent" in clear.json()["detail"]
    rgba[30, 30, 3] = 255  # one visible pixel: an image
    assert post(rgba).status_code == 200
    # a palette image whose transparent entry is every pixel's
    palette = post(np.zeros((60, 60), np.uint8), transparency=0)
    assert palette.status_code == 422 and "fully transparent" in palette.json()["detail"]
    assert post(grain()).status_code == 200


def test_oversized_upload_is_413(served_image: ServedModel) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    big = encoded(noise, "PNG")
    assert len(big) > 20_000
    settings = ServeSettings(body_limit=20_000)
    with TestClient(create_app(lambda: [served_image], settings)) as small:
        raw = small.post(PREDICT, content=big, headers={"content-type": "image/png"})
        form = small.post(PREDICT, files={"file": ("noise.png", big, "image/png")})
    assert raw.status_code == form.status_code == 413
    # it named neither the setting nor what base64 adds
    detail = raw.json()["detail"]
    assert "20,000 bytes, this server's serve.body_limit" in detail, detail
    assert "not base64 in JSON, which is a third larger" in detail


def test_a_json_image_may_be_as_large_as_the_body_limit(served_image: ServedModel) -> None:
    # base64 was capped at 2 MB whatever serve.body_limit said: with the limit raised,
    # the same photo was answered as a file and refused (422) as JSON
    noise = np.random.default_rng(1).integers(0, 256, (760, 760, 3), dtype=np.uint8)
    big = base64.b64encode(encoded(noise, "PNG")).decode()
    assert len(big) > 2_000_000
    settings = ServeSettings(body_limit=3_000_000)
    with TestClient(create_app(lambda: [served_image], settings)) as large:
        answer = large.post(PREDICT, json={"image": big})
        assert answer.status_code == 200, answer.text[:300]
        schema = large.get("/v1/models").json()["models"][0]["schema"]
        assert "maxLength" not in schema["properties"]["image"]


def test_multipart_needs_exactly_one_file(client: TestClient) -> None:
    png = encoded(grain(), "PNG")
    no_file = client.post(PREDICT, files={"note": (None, "a field, not a file")})
    two = client.post(
        PREDICT, files=[("a", ("a.png", png, "image/png")), ("b", ("b.png", png, "image/png"))]
    )
    assert no_file.status_code == 422 and "has 0 file parts" in no_file.json()["detail"]
    assert two.status_code == 422 and "Maximum number of files is 1" in two.json()["detail"]


def test_captured_drift_features_describe_the_image(
    client: TestClient, store: CaptureStore
) -> None:
    bright, dark = grain(), (grain() * 0.3).astype(np.uint8)
    for pixels in (bright, dark):
        response = client.post(
            PREDICT, content=encoded(pixels, "PNG"), headers={"content-type": "image/png"}
        )
        assert response.status_code == 200
    first, second = store.read(model="image")
    assert set(first.features) == {
        "brightness", "contrast", "sharpness", "red", "green", "blue",
        "embedding_distance",
    }  # fmt: skip
    assert second.features["brightness"] < 0.5 * first.features["brightness"]
    assert second.features["contrast"] < first.features["contrast"]


def test_twins_stays_json_only(served: ServedModel) -> None:
    with TestClient(create_app(lambda: [served], ServeSettings())) as twins:
        response = twins.post(
            "/v1/models/twins/predict",
            content=encoded(grain(), "PNG"),
            headers={"content-type": "image/png"},
        )
    assert response.status_code == 415
    assert response.json()["detail"] == "Content-Type must be application/json, not 'image/png'."


def test_images_decode_off_the_event_loop(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []
    threads: list[str] = []
    original = ImageServing.decode_bytes

    def decode_bytes(self: ImageServing, data: bytes) -> list[np.ndarray]:
        try:
            asyncio.get_running_loop()
            seen.append(True)  # on the event loop: every other request would wait for it
        except RuntimeError:
            seen.append(False)
        threads.append(threading.current_thread().name)
        return original(self, data)

    monkeypatch.setattr(ImageServing, "decode_bytes", decode_bytes)
    data = encoded(grain(), "PNG")
    for _ in range(3):
        response = client.post(PREDICT, content=data, headers={"content-type": "image/png"})
        assert response.status_code == 200
    assert seen == [False] * 3
    # the server's one decode thread, not asyncio's pool of up to 32 beside the model
    assert len(set(threads)) == 1 and threads[0].startswith("decode")


def test_a_slow_encode_does_not_hold_the_next_request_s_decoding(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Masks were encoded in the decode thread: four 25 Mpx masks held a 224 px tile's
    # decoding, and with it the model, for 1.4 s.
    encoding, release, decoded = threading.Event(), threading.Event(), threading.Event()
    threads: dict[str, str] = {}
    original_encode, original_decode = ImageServing.encode, ImageServing.decode_bytes

    def encode(self: ImageServing, *args: Any) -> Any:
        threads["encode"] = threading.current_thread().name
        encoding.set()
        release.wait(10)
        return original_encode(self, *args)

    def decode_bytes(self: ImageServing, data: bytes) -> list[np.ndarray]:
        threads["decode"] = threading.current_thread().name
        if encoding.is_set():
            decoded.set()  # decoded while the first answer is still being encoded
        return original_decode(self, data)

    monkeypatch.setattr(ImageServing, "encode", encode)
    monkeypatch.setattr(ImageServing, "decode_bytes", decode_bytes)
    monkeypatch.setattr(ImageServing, "encode_in_thread", True)  # as segmentation's masks
    data = encoded(grain(), "PNG")

    def post() -> Any:
        return client.post(PREDICT, content=data, headers=IMAGE_PNG)

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post)
        assert encoding.wait(10)
        second = pool.submit(post)
        try:
            assert decoded.wait(5), "the second image waited for the first answer's encoding"
        finally:
            release.set()
        assert first.result().status_code == second.result().status_code == 200
    assert threads["decode"].startswith("decode") and threads["encode"].startswith("encode")


@pytest.mark.parametrize("step", ["decode_bytes", "encode"])
def test_a_slow_decode_or_encode_ends_at_the_client_deadline(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    # A 5000 px tile decoded (or its mask encoded) for 0.5 s in the decode thread: a client
    # that said X-Deadline-Ms: 300 got its 200 after 0.79 s
    original = getattr(ImageServing, step)

    def slow(self: ImageServing, *args: Any) -> Any:
        time.sleep(0.8)
        return original(self, *args)

    monkeypatch.setattr(ImageServing, step, slow)
    monkeypatch.setattr(ImageServing, "encode_in_thread", True)  # as segmentation's masks
    data, started = encoded(grain(), "PNG"), time.perf_counter()
    response = client.post(PREDICT, content=data, headers={**IMAGE_PNG, "x-deadline-ms": "300"})
    took = time.perf_counter() - started
    assert response.status_code == 504, response.text
    assert "did not answer within 300 ms" in response.json()["detail"]
    assert took < 0.7, took  # at the deadline, not when the thread was done
    time.sleep(0.8)  # the thread finishes that one, and nobody waits for it
    monkeypatch.setattr(ImageServing, step, original)
    assert client.post(PREDICT, content=data, headers=IMAGE_PNG).status_code == 200


def test_one_process_serves_twins_and_images_side_by_side(
    served: ServedModel, served_image: ServedModel, store: CaptureStore
) -> None:
    """Two models in one app, sharing one model-call slot (serve.threads=1): each has its own
    batching thread, stopped with the app, and every concurrent answer equals the model's
    own answer to the same request."""
    png = encoded(grain(), "PNG")
    settings = ServeSettings(threads=1)
    with TestClient(create_app(lambda: [served, served_image], settings, store)) as c:
        pair = c.get("/v1/models/twins/examples").json()["examples"][0]["request"]

        def twins() -> Any:
            return c.post("/v1/models/twins/predict", json=pair)

        def image() -> Any:
            return c.post(PREDICT, content=png, headers={"content-type": "image/png"})

        alone = {"twins": twins().json(), "image": image().json()}
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: (twins if i % 2 else image)(), range(24)))
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        documented = documented_answer(c)  # one of two shapes, told apart by "model"
        for answer in answers:  # the same answer, up to the float noise of batch sizes
            body = answer.json()
            assert close(body, alone[body["model"]]), (body, alone[body["model"]])
            documented.validate(body)
        swapped = {**alone["image"], "model": "twins"}  # an image's outputs under twins
        assert not documented.is_valid(swapped)
        assert {m["name"] for m in c.get("/v1/models").json()["models"]} == {"twins", "image"}
        batchers = {t.name for t in threading.enumerate() if t.name.startswith("batch-")}
        assert batchers == {"batch-twins", "batch-image"}
        text = c.get("/metrics").text
        for name in ("twins", "image"):
            assert f'modelcycle_batch_size_count{{model="{name}"}}' in text
    assert not any(t.name.startswith("batch-") for t in threading.enumerate())  # stopped
    captured = store.read()
    assert {row.model for row in captured} == {"twins", "image"} and len(captured) == 26


def close(a: Any, b: Any, tol: float = 1e-5) -> bool:
    """Equal JSON values, numbers within `tol`."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= tol
    return bool(a == b)
