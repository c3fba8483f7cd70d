"""The web page of a server with several models (an image classifier and twins), in real
headless Chromium against `modelcycle serve`: switching models, uploads the model cannot
take, and a model whose alias moves while the page is open."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect
from test_web_page import ARTIFACTS, TWIN_LIKE, chromium_page, held_requests

from image_fixtures import publish_image
from modelcycle.registry import Registry
from modelcycle.tracking import Tracker, TrackingSettings
from server_process import Server, free_port, running_server, serve_command, started
from serving_fixtures import ServedWorkspace, publish

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Tracker]:
    """A workspace with image@champion (a tiny rice classifier) and twins@champion."""
    tmp = tmp_path_factory.mktemp("two-models")
    tracker = Tracker(TrackingSettings(), tmp / "ws")
    publish_image(tmp, tracker)
    publish(tmp, tracker, 0.95, seed=0)
    Registry(tracker.uri).promote("twins")
    return tmp / "ws", tracker


@contextmanager
def serving_both(root: Path, log: Path, *extra: str) -> Iterator[Server]:
    """`modelcycle serve image@champion twins@champion` on a free loopback port."""
    port = free_port()
    command = serve_command(root, port, *extra, reference="image@champion")
    command.insert(command.index("image@champion") + 1, "twins@champion")
    with started(command, log, f"http://127.0.0.1:{port}") as server:
        yield server


def choose(page: Page, model: str) -> None:
    """Pick `model` in the list and wait until its examples are in."""
    page.select_option("#model", model)
    expect(page.locator("#example option").first).to_be_attached()


def test_switching_models_clears_the_other_model_s_answer(
    two_models: tuple[Path, Tracker], tmp_path: Path
) -> None:
    root, _ = two_models
    with (
        serving_both(root, tmp_path / "server.log") as server,
        chromium_page(height=900) as (page, errors),
    ):
        try:
            page.goto(f"{server.url}/")
            expect(page.locator("#model option")).to_have_text(
                ["image@champion (version 1)", "twins@champion (version 1)"]
            )
            choose(page, "image")
            page.click("#predict")
            expect(page.locator("#topk li")).to_have_count(5)
            # another model chosen: the image model's answer is not left under it
            choose(page, "twins")
            expect(page.locator("#result")).to_have_text("")
            expect(page.locator("#drop")).to_be_hidden()
            page.click("#predict")
            expect(page.locator("#prediction")).to_have_text(TWIN_LIKE)
            choose(page, "image")
            expect(page.locator("#prediction")).to_have_count(0)
            page.screenshot(path=ARTIFACTS / "web_page_models.png", full_page=True)
        except BaseException:
            page.screenshot(path=ARTIFACTS / "web_page_models_failure.png", full_page=True)
            raise
        assert not errors, f"the page raised: {errors}"


#: Every answer the page shows, as its footer says it ("model image, version 1 | for ..."),
#: however briefly: a late answer may be replaced by the next before a test looks.
RECORD_ANSWERS = """() => {
  window.answers = [];
  new MutationObserver(() => {
    const version = document.getElementById("version");
    const label = document.getElementById("for");
    if (version && label) window.answers.push(`${version.textContent} | ${label.textContent}`);
  }).observe(document.getElementById("result"), { childList: true });
}"""


def test_a_late_answer_is_shown_only_under_the_model_and_request_it_answers(
    two_models: tuple[Path, Tracker], tmp_path: Path
) -> None:
    root, _ = two_models
    photo = tmp_path / "grain.png"
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(photo)
    image_route = "**/v1/models/image/predict"
    with (
        serving_both(root, tmp_path / "server.log") as server,
        chromium_page(height=900) as (page, errors),
    ):
        page.goto(f"{server.url}/")
        choose(page, "image")
        page.evaluate(RECORD_ANSWERS)
        # the image model's answer comes late, after twins was chosen: it was shown under twins
        held = held_requests(page, image_route, count=1)
        page.click("#predict")
        expect(page.locator("#result")).to_have_text("Predicting…")
        choose(page, "twins")
        expect(page.locator("#result")).to_have_text("")
        expect(page.get_by_role("button", name="Predict")).to_be_enabled()
        held[0].continue_()  # the image model answers now
        page.click("#predict")
        expect(page.locator("#prediction")).to_have_text(TWIN_LIKE)
        # an older request's answer, late: it replaced the answer to the file chosen since
        choose(page, "image")
        page.unroute(image_route)
        held = held_requests(page, image_route, count=1)
        page.click("#predict")  # the example
        page.set_input_files("#image", str(photo))  # sent while the example is in flight
        expect(page.locator("#for")).to_have_text("for your file grain.png")
        held[0].continue_()  # the example's answer arrives now
        page.click("#predict")  # the file again: its answer comes after any late one
        page.wait_for_function("window.answers.length >= 3")
        answers = page.evaluate("window.answers")
        assert len(answers) == 3, answers
        assert answers[0].startswith("model twins, version 1 | for example 1."), answers
        assert answers[1:] == ["model image, version 1 | for your file grain.png"] * 2, answers
        assert not errors, f"the page raised: {errors}"


#: Keeps the bytes of every file the page sends in `window.files` (Playwright gives no body
#: of a request whose body is a Blob).
RECORD_FILES = """() => {
  const fetched = window.fetch;
  window.files = [];
  window.fetch = async (url, options = {}) => {
    if (options.body instanceof Blob) {
      window.files.push(Array.from(new Uint8Array(await options.body.arrayBuffer())));
    }
    return fetched(url, options);
  };
}"""


def test_a_photo_over_the_body_limit_is_shrunk_in_the_browser_and_predicted(
    two_models: tuple[Path, Tracker], tmp_path: Path
) -> None:
    # A phone's photo (3-8 MB) was refused by the 1 MB default limit, with advice only
    root, _ = two_models
    photo = tmp_path / "photo.png"  # noise does not compress: about 2.4 MB
    noise = np.random.default_rng(0).integers(0, 256, (800, 1000, 3), dtype=np.uint8)
    Image.fromarray(noise).save(photo)
    size = photo.stat().st_size
    assert size > 1_000_000
    with (
        serving_both(root, tmp_path / "server.log") as server,
        chromium_page(height=900) as (page, errors),
    ):
        page.goto(f"{server.url}/")
        choose(page, "image")
        page.evaluate(RECORD_FILES)
        page.set_input_files("#image", str(photo))
        page.wait_for_function("window.files.length >= 1")
        sent = bytes(page.evaluate("window.files[0]"))
        assert len(sent) <= 1_000_000 and sent.startswith(b"\x89PNG")
        assert Image.open(io.BytesIO(sent)).size == (60, 48)  # shorter side twice the model's 24
        expect(page.locator("#topk li")).to_have_count(5)
        expect(page.locator("#for")).to_have_text("for your file photo.png")
        expect(page.locator("#shrunk")).to_have_text(
            f"photo.png (1000×800 pixels, {size / 1e6:.1f} MB) is over this server's 1.0 MB "
            f"limit: sent shrunk to 60×48 pixels as PNG ({-(-len(sent) // 1000)} kB); the "
            "model sees 24×24 pixels either way."
        )
        direct = httpx.post(
            f"{server.url}/v1/models/image/predict",
            content=sent,
            headers={"Content-Type": "image/png"},
            timeout=10,
        ).json()["outputs"]
        expect(page.locator("#prediction")).to_contain_text(f"{direct['class']}: ")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "web_page_shrunk.png", full_page=True)
        page.click("#predict")  # sent again, shrunk once
        expect(page.locator("#shrunk")).to_contain_text("sent shrunk to 60×48 pixels")
        assert not errors, f"the page raised: {errors}"


def test_a_file_larger_than_the_server_takes_is_named_with_its_size(
    two_models: tuple[Path, Tracker], tmp_path: Path
) -> None:
    root, _ = two_models
    photo = tmp_path / "photo.png"  # noise does not compress: about 150 kB
    noise = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    Image.fromarray(noise).save(photo)
    size = photo.stat().st_size
    # shrunk to 48×48 pixels of noise, still over 1,000 bytes as PNG or JPEG: sent as it is
    with (
        serving_both(root, tmp_path / "server.log", "serve.body_limit=1000") as server,
        chromium_page(height=900) as (page, errors),
    ):
        page.goto(f"{server.url}/")
        choose(page, "image")
        page.set_input_files("#image", str(photo))
        expect(page.locator("#result")).to_have_class("error")
        # it said only "Request body is larger than 100,000 bytes, this server's
        # serve.body_limit": a setting of the server, not what to do with the photo
        assert page.inner_text("#result").splitlines()[0] == (
            f"photo.png is {size / 1e6:.1f} MB, larger than this server takes: send a smaller "
            "image (fewer pixels, or saved as JPEG) (error 413):"
        )
        assert not errors, f"the page raised: {errors}"


def test_the_page_follows_an_alias_moved_while_it_is_open(
    two_versions: ServedWorkspace, tmp_path: Path
) -> None:
    reload = ("serve.reload_seconds=1",)
    with (
        running_server(two_versions.root, tmp_path / "server.log", extra=reload) as server,
        chromium_page() as (page, errors),
    ):
        page.goto(f"{server.url}/")
        expect(page.locator("#model option")).to_have_text(["twins@champion (version 1)"])
        page.click("#predict")
        expect(page.locator("#version")).to_have_text("model twins, version 1")
        two_versions.registry.promote("twins")  # champion: the challenger, version 2
        deadline = time.monotonic() + 60
        while "version 2" not in page.inner_text("#version"):  # the server reloads within ~1 s
            assert time.monotonic() < deadline, f"never answered by version 2; {server.output()}"
            page.wait_for_timeout(500)
            page.click("#predict")
            expect(page.locator("#version")).to_be_visible()
        # the list named version 1 beside version 2's answers
        expect(page.locator("#model option")).to_have_text(["twins@champion (version 2)"])
        expect(page.locator("#moved")).to_have_text(
            "twins@champion moved from version 1 to version 2 since the page listed it"
        )
        page.click("#predict")
        expect(page.locator("#moved")).to_have_count(0)  # said once
        page.screenshot(path=ARTIFACTS / "web_page_moved.png", full_page=True)
        assert not errors, f"the page raised: {errors}"
