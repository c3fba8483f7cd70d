"""`modelcycle predict`: a file of requests scored offline through the server's own app."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from image_fixtures import publish_image
from modelcycle.batch_predict import PredictInputError, predict, read_inputs
from modelcycle.cli import app
from modelcycle.serving.app import ServeSettings, create_app
from modelcycle.serving.loading import ServedModel
from modelcycle.tracking import Tracker, TrackingSettings
from serving_fixtures import ServedWorkspace

runner = CliRunner()
PREDICT = "/v1/models/twins/predict"


def _invoke(*args: str) -> tuple[int, str]:
    done = runner.invoke(app, ["predict", *args])
    return done.exit_code, " ".join(done.stdout.split())


def test_each_line_gets_the_servers_answer_or_its_refusal_in_order(
    served_workspace: ServedWorkspace, served: ServedModel, tmp_path: Path
) -> None:
    bodies = [e["request"] for e in served.examples]
    n = len(bodies)
    lines = [json.dumps(b) for b in bodies] + ["", '{"a": 1}', "not json", json.dumps(bodies[0])]
    source = tmp_path / "pairs.jsonl"
    source.write_text("\n".join(lines) + "\n")
    workspace = f"workspace={served_workspace.root}"
    code, said = _invoke("twins@champion", str(source), workspace)
    assert code == 1, said  # some inputs refused
    out = tmp_path / "pairs.predictions.jsonl"
    assert f"{n + 1} of {n + 3} inputs answered; answers in {out}" in said
    assert "1 × 400: Body is not valid JSON" in said and "1 × 422: a: Input should be" in said
    written = [json.loads(line) for line in out.read_text().splitlines()]
    numbers = [*range(1, n + 1), n + 2, n + 3, n + 4]  # the empty line is no input
    assert [w["input"] for w in written] == [f"line {k}" for k in numbers]
    assert [w["status"] for w in written] == [200] * n + [422, 400, 200]
    with TestClient(create_app(lambda: [served], ServeSettings())) as client:
        expected = [client.post(PREDICT, json=b).json() for b in [*bodies, bodies[0]]]
    answers = [w["answer"] for w in written if w["status"] == 200]
    for got, want in zip(answers, expected, strict=True):  # the server's own answers
        assert (got["model"], got["version"]) == (want["model"], want["version"]) == ("twins", "1")
        assert got["outputs"] == pytest.approx(want["outputs"], rel=1e-5)
    before = out.read_text()
    code, said = _invoke("twins@champion", str(source), workspace)
    assert code == 2 and "exists; give --out a new file" in said
    assert out.read_text() == before  # nothing overwritten


def test_a_json_list_is_scored_and_unreadable_sources_are_named(
    served_workspace: ServedWorkspace, served: ServedModel, tmp_path: Path
) -> None:
    bodies = [e["request"] for e in served.examples]
    source, out = tmp_path / "pairs.json", tmp_path / "answers" / "scores.jsonl"
    source.write_text(json.dumps(bodies))
    out.parent.mkdir()
    workspace = f"workspace={served_workspace.root}"
    code, said = _invoke("twins@champion", str(source), workspace, "--out", str(out))
    assert code == 0 and f"{len(bodies)} of {len(bodies)} inputs answered" in said, said
    assert [json.loads(line)["input"] for line in out.read_text().splitlines()] == [
        f"item {k}" for k in range(1, len(bodies) + 1)
    ]
    (tmp_path / "one.json").write_text(json.dumps(bodies[0]))
    (tmp_path / "empty").mkdir()
    for given, message in [
        ("one.json", "one.json: a .json file holds a list of request bodies"),
        ("missing.jsonl", "missing.jsonl: no such file or folder; give a .jsonl file"),
        ("empty", "empty: an empty folder; give files to score"),
    ]:
        code, said = _invoke("twins@champion", str(tmp_path / given), workspace)
        assert code == 2 and message in said and "Traceback" not in said, said
    with pytest.raises(PredictInputError):
        read_inputs(tmp_path / "missing.jsonl")  # said at once, before any model loads


def test_inputs_in_flight_together_are_batched(served: ServedModel, tmp_path: Path) -> None:
    # one at a time, each input would be a model call of its own
    calls: list[int] = []

    class Counted(ServedModel):
        def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
            calls.append(len(inputs[0]))
            return super().run(inputs)

    counted = Counted(**{k: getattr(served, k) for k in served.__dataclass_fields__})
    source = tmp_path / "many.jsonl"
    body = json.dumps(served.examples[0]["request"])
    source.write_text("\n".join([body] * 300))
    scored = predict(
        create_app(lambda: [counted], ServeSettings(max_batch=32)),
        "twins",
        read_inputs(source),
        tmp_path / "out.jsonl",
        in_flight=64,
    )
    assert (scored.answered, scored.refused) == (300, 0)
    assert calls[:2] == [1, 8], calls  # the warm-up
    assert sum(calls[2:]) == 300 and max(calls[2:]) > 1 and len(calls) - 2 < 300, calls


@pytest.mark.slow
def test_a_folder_of_images_is_scored_file_by_file(tmp_path: Path) -> None:
    from PIL import Image

    publish_image(tmp_path, Tracker(TrackingSettings(), tmp_path / "ws"))
    folder = tmp_path / "grains"
    (folder / "sub").mkdir(parents=True)
    pixels = np.zeros((60, 60, 3), np.uint8)
    pixels[20:40, 25:35] = (230, 225, 200)
    Image.fromarray(pixels).save(folder / "a.png")
    Image.fromarray(pixels).save(folder / "sub" / "b.jpg")
    (folder / "notes.txt").write_text("not an image")
    code, said = _invoke("image@champion", str(folder), f"workspace={tmp_path / 'ws'}")
    assert code == 1 and "2 of 3 inputs answered" in said, said
    written = {
        w["input"]: w for w in map(json.loads, (tmp_path / "grains.predictions.jsonl").open())
    }
    assert set(written) == {"a.png", "notes.txt", "sub/b.jpg"}
    assert written["a.png"]["status"] == written["sub/b.jpg"]["status"] == 200
    assert written["a.png"]["answer"]["model"] == "image"
    assert written["notes.txt"]["status"] == 415 and "text/plain" in written["notes.txt"]["error"]
