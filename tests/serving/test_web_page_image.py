"""The web page with an image model, in real headless Chromium against `modelcycle serve`."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect
from test_server_process import running_server
from test_web_page import ARTIFACTS, chromium_page

from image_fixtures import publish_image
from modelcycle.tracking import Tracker, TrackingSettings

pytestmark = pytest.mark.slow


def test_drop_an_image_and_see_top_k(tmp_path: Path) -> None:
    published = publish_image(tmp_path, Tracker(TrackingSettings(), tmp_path / "ws"))
    photo = tmp_path / "grain.png"
    pixels = np.zeros((80, 80, 3), np.uint8)
    pixels[30:50, 10:70] = (230, 225, 200)
    Image.fromarray(pixels).save(photo)
    ARTIFACTS.mkdir(exist_ok=True)
    with (
        running_server(published.root, tmp_path / "server.log", "image@champion") as server,
        chromium_page(height=900) as (page, errors),
    ):
        page.goto(f"{server.url}/")
        expect(page.locator("#model option")).to_have_text(["image@champion (version 1)"])
        expect(page.locator("#drop")).to_be_visible()
        expect(page.locator("#parts")).to_be_hidden()  # an image is not picked apart

        page.set_input_files("#image", str(photo))  # choosing a file
        expect(page.locator("#topk li")).to_have_count(5)
        percent = r"(\d+\.\d|>99\.9|<0\.1)%"  # 0.9996 reads >99.9%, not 100.0%
        expect(page.locator("#prediction")).to_have_text(re.compile(rf"^\w+: {percent}$"))
        expect(page.locator("#version")).to_contain_text("version 1")
        expect(page.locator("#preview")).to_be_visible()
        expect(page.locator("#for")).to_have_text("for your file grain.png")
        expect(page.locator("#preview")).to_have_attribute("alt", "your file grain.png")
        expect(page.locator("#result")).to_have_role("status")  # read out when it changes
        expect(page.locator("#result")).not_to_have_attribute("aria-busy", "true")
        page.screenshot(path=ARTIFACTS / "web_page_image.png", full_page=True)

        # dropping a file: the same request, the same answer
        first = page.locator("#topk li").all_inner_texts()
        page.evaluate("() => { document.getElementById('result').textContent = ''; }")
        data = photo.read_bytes()
        transfer = page.evaluate_handle(
            """(bytes) => { const t = new DataTransfer();
               t.items.add(new File([new Uint8Array(bytes)], 'grain.png', {type: 'image/png'}));
               return t; }""",
            list(data),
        )
        page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
        expect(page.locator("#topk li")).to_have_text(first)

        # Predict sends the file again, not the example still in the text box
        page.evaluate("() => { document.getElementById('result').textContent = ''; }")
        page.click("#predict")
        expect(page.locator("#topk li")).to_have_text(first)
        expect(page.locator("#for")).to_have_text("for your file grain.png")

        # a text file dropped: not sent, and said in words (not the server's media types)
        text = page.evaluate_handle(
            """() => { const t = new DataTransfer();
               t.items.add(new File(['hello'], 'notes.txt', {type: 'text/plain'}));
               return t; }"""
        )
        page.dispatch_event("#drop", "drop", {"dataTransfer": text})
        expect(page.locator("#result")).to_have_class("error")
        expect(page.locator("#result")).to_have_text(
            "notes.txt is a text/plain file, not an image this model takes: choose a JPEG or "
            "PNG image."
        )
        # the preview is the request box's example again, what Predict now sends
        expect(page.locator("#preview")).to_have_attribute("src", re.compile(r"^data:image/"))

        # an example: its image is shown, and the answer says it is for that example
        page.select_option("#example", index=1)
        label = page.locator("#example option").nth(1).inner_text()
        expect(page.locator("#preview")).to_have_attribute(
            "src", re.compile(r"^data:image/png;base64,iVBOR")
        )
        assert page.input_value("#image") == "", "the chosen file is still selected"
        page.click("#predict")
        expect(page.locator("#topk li")).to_have_count(5)
        expect(page.locator("#for")).to_have_text(f"for example {label}")
        shown = page.evaluate(
            "() => { const p = document.getElementById('preview');"
            " return [p.complete, p.naturalWidth]; }"
        )
        assert shown[0] and shown[1] > 0, f"the example's image did not render: {shown}"
        assert not errors, f"the page raised: {errors}"
