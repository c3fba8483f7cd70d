"""`modelcycle loadtest`: real Locust (subprocess) against a real server, budgets decide exit."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from modelcycle.cli import app
from modelcycle.loadtest import LoadPlan, LoadTestError, read_requests
from modelcycle.monitoring.capture import CaptureStore
from modelcycle.serving.app import ServeSettings, create_app
from modelcycle.serving.loading import ServedModel
from server_process import free_port, serve_command, started
from serving_fixtures import ServedWorkspace

runner = CliRunner()


def _loadtest(url: str, workspace: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["loadtest", url, f"workspace={workspace}", *args])
    return result.exit_code, result.output


def test_an_unreachable_server_exits_2_saying_so(tmp_path: Path) -> None:
    code, output = _loadtest(f"http://127.0.0.1:{free_port()}", tmp_path, "--duration", "1s")
    assert code == 2
    assert "Cannot reach" in output and "modelcycle serve" in output
    assert "Locust:" not in output  # no load was started
    assert not (tmp_path / "reports").exists()  # nor an empty report folder left


def test_load_tests_started_in_the_same_second_each_get_their_own_report_folder(
    served: ServedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Named to the second, two load tests (two CI jobs on one runner) wrote one folder.
    from modelcycle import loadtest

    url = "http://127.0.0.1:8000"
    client = TestClient(create_app(lambda: [served], ServeSettings()))

    def answered(method: str, to: str, **kwargs: Any) -> Any:  # the server answers
        kwargs.pop("timeout", None)  # the TestClient takes none
        return client.request(method, to.removeprefix(url), **kwargs)

    def locust(argv: list[str], timeout: float, **popen: Any) -> subprocess.CompletedProcess[str]:
        folder = Path(argv[argv.index("--csv") + 1]).parent
        totals = {"requests": 10, "failures": 0, "rps": 5.0, "p50_ms": 2.0, "p99_ms": 4.0}
        (folder / loadtest.FINAL_STATS).write_text(json.dumps(totals))
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(loadtest.httpx, "request", answered)
    monkeypatch.setattr(loadtest, "run_in_session", locust)
    monkeypatch.setattr(time, "strftime", lambda fmt, *at: "20260101-120000")
    with client:
        for _ in range(2):
            code, output = _loadtest(url, tmp_path, "loadtest.min_rps=1", "--duration", "1s")
            assert code == 0, output
    folders = sorted((tmp_path / "reports").iterdir())
    assert [f.name for f in folders] == ["loadtest-20260101-120000", "loadtest-20260101-120000-2"]
    assert all((f / "summary.json").is_file() for f in folders)
    assert f"summary.json): {folders[1]}" in output  # the folder it wrote, said


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://127.0.0.1", "localhost"])
def test_an_address_without_http_is_refused_naming_the_form(tmp_path: Path, url: str) -> None:
    code, output = _loadtest(url, tmp_path, "--duration", "1s")
    assert code == 2
    assert f"{url!r} is not an HTTP URL" in output and "http://127.0.0.1:8000" in output


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000/v1/models/twins/predict", "http://127.0.0.1:8000/v1/"]
)
def test_a_route_is_refused_naming_the_servers_address(tmp_path: Path, url: str) -> None:
    # Before, it asked GET {url}/v1/models and reported that route's 404.
    code, output = _loadtest(url, tmp_path, "--duration", "1s")
    assert code == 2
    assert "is a route of the server; give the server's own address, http://127.0.0.1:8000:" in (
        " ".join(output.split())
    )


@pytest.mark.parametrize(
    "plan",
    [{"users": 0}, {"spawn_rate": 0.0}, {"duration_s": -1.0}, {"duration_s": 1e309}],
    ids=str,
)
def test_a_plan_without_load_is_refused(plan: dict[str, float]) -> None:
    (key,) = plan
    with pytest.raises(ValueError, match=rf"^loadtest\.{key}=.*: give the "):
        LoadPlan(**plan)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # 0 was taken as "not given"
        (["--spawn-rate", "0"], r"loadtest\.spawn_rate=0.0: give the users started per second"),
        (["loadtest.p99_ms=abc"], r"loadtest.p99_ms='abc': give a number"),
        (["loadtest.max_error_rate=2"], r"loadtest\.max_error_rate=2: give .* from 0 to 1"),
        (["loadtest.min_rps=-1"], r"loadtest\.min_rps=-1: give the fewest requests per second"),
        (["loadtest.users=many"], r"loadtest.users='many': give a whole number"),
        # Locust takes whole seconds only: 2.5 s was passed on, and Locust refused its format
        (
            ["--duration", "2.5s"],
            r"loadtest\.duration_s=2.5: Locust runs whole seconds; give 2",
        ),
        (["loadtest.duration_s=0.5"], r"loadtest\.duration_s=0.5: Locust runs whole .*; give 1\."),
    ],
)
def test_a_bad_plan_or_budget_is_refused_before_any_load(
    tmp_path: Path, args: list[str], message: str
) -> None:
    # Before, text budgets were taken and the run crashed comparing them after its load.
    code, output = _loadtest(f"http://127.0.0.1:{free_port()}", tmp_path, *args)
    assert code == 2, output
    assert re.search(message, " ".join(output.split())), output
    assert "Locust:" not in output  # nothing was started


def _png(side: int, shade: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (shade, shade, shade)).save(buffer, format="PNG")
    return buffer.getvalue()


TWINS_EXAMPLE = {"a": {"lh_bankssts_thickness": 2.5}, "b": {"lh_bankssts_thickness": 2.4}}


def test_requests_come_from_a_json_list_or_json_lines(tmp_path: Path) -> None:
    bodies = [TWINS_EXAMPLE, {"a": {"x": 1.0}, "b": {"x": 2.0}}]
    listed = tmp_path / "requests.json"
    listed.write_text(json.dumps(bodies))
    lines = tmp_path / "requests.jsonl"
    lines.write_text("\n".join(json.dumps(b) for b in bodies) + "\n\n")
    assert read_requests(listed, [TWINS_EXAMPLE]) == bodies
    assert read_requests(lines, [TWINS_EXAMPLE]) == bodies


def test_a_folder_of_photos_stands_in_for_the_example_images(tmp_path: Path) -> None:
    # The examples are held-out images at the model's input size (32-64 px): cheaper to
    # decode than the photos clients send, so a load test on them flattered the server.
    example = {"image": base64.b64encode(_png(32, 0)).decode()}
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "b.png").write_bytes(_png(1024, 200))
    (photos / "a.PNG").write_bytes(_png(768, 100))
    (photos / "notes.txt").write_text("not an image")
    bodies = read_requests(photos, [example], "image_rice")
    assert [len(base64.b64decode(b["image"])) for b in bodies] == [
        len(_png(768, 100)),
        len(_png(1024, 200)),
    ]
    with pytest.raises(LoadTestError, match="The requests of twins do not hold one image"):
        read_requests(photos, [TWINS_EXAMPLE], "twins")
    with pytest.raises(LoadTestError, match=r"holds no \.png, \.jpg or \.jpeg file"):
        read_requests(tmp_path, [example])  # only the folder and the JSON files above


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ("[]", "holds no list of request bodies"),
        ('{"a": 1}', "holds no list of request bodies"),
        ("[1, 2]", "holds no list of request bodies"),
        ("[{", "give a JSON list of request bodies, JSON Lines"),
    ],
)
def test_requests_that_are_no_list_of_bodies_are_refused_naming_the_file(
    tmp_path: Path, content: str, said: str
) -> None:
    path = tmp_path / "requests.json"
    path.write_text(content)
    with pytest.raises(LoadTestError, match=said) as refused:
        read_requests(path, [TWINS_EXAMPLE], "twins")
    assert str(path) in str(refused.value)


KEY = "loadtest-server-key-0123"


def _marked(root: Path, at_least: int) -> int:
    """The captures marked as load-test traffic, once `at_least` are written (10 s at most)."""
    deadline = time.monotonic() + 10
    while True:
        with CaptureStore(root / "capture.db") as store:
            marked = len(store.read(model="twins", source="loadtest"))
        if marked >= at_least or time.monotonic() > deadline:
            return marked
        time.sleep(0.2)


@pytest.mark.slow
def test_a_short_run_meets_loose_budgets_and_misses_an_impossible_one(
    served_workspace: ServedWorkspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODELCYCLE_API_KEY", raising=False)  # the key is given as an override
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = serve_command(served_workspace.root, port, f"serve.api_key={KEY}")
    with started(command, tmp_path / "server.log", url, "/readyz") as server:
        code, output = _loadtest(url, tmp_path / "ws0", "--duration", "1s")
        assert code == 2 and "answered 401 (no key was given)" in output, output
        assert "set MODELCYCLE_API_KEY" in output and "Locust:" not in output
        afile = tmp_path / "afile"
        afile.write_text("mine")
        code, output = _loadtest(url, tmp_path / "ws0", f"serve.api_key={KEY}", "--out", str(afile))
        assert code == 2 and f"Cannot write the report into {afile}" in output, output
        assert afile.read_text() == "mine" and "Traceback" not in output
        loose = (
            "loadtest.p99_ms=5000", "loadtest.min_rps=1", "loadtest.max_error_rate=0",
            f"serve.api_key={KEY}",
        )  # fmt: skip
        args = ("--users", "2", "--spawn-rate", "2", "--duration", "4s")
        code, output = _loadtest(url, tmp_path / "ws", *args, *loose)
        assert code == 0, f"{output}\n{server.output(10)}"
        assert f"Locust: 2 users for 4 s against {url} (twins) ..." in output
        assert "every budget met" in output
        (report,) = (tmp_path / "ws" / "reports").glob("loadtest-*")
        summary = json.loads((report / "summary.json").read_text())
        assert summary["passed"] and summary["model"] == "twins"
        assert summary["requests"] > 10 and summary["failures"] == 0
        # captured as the load test's own traffic, which drift tests leave out; the summary
        # counts every request, where Locust's last one-second CSV snapshot missed ~1 s of them
        assert _marked(served_workspace.root, summary["requests"]) == summary["requests"]
        # the key reached Locust through its environment, not through the report's files
        assert all(KEY not in f.read_text(errors="replace") for f in report.iterdir())
        assert "os.environ" in (report / "locustfile.py").read_text()
        assert 0 < summary["p50_ms"] <= summary["p99_ms"] <= 5000
        assert summary["plan"] == {"users": 2, "spawn_rate": 2.0, "duration_s": 4.0}
        assert (report / "report.html").stat().st_size > 1000
        assert (report / "locust_stats.csv").is_file()
        impossible = ("--users", "1", "--duration", "2s", "loadtest.min_rps=1000000", loose[-1])
        out = ("--out", str(tmp_path / "chosen"))  # as the registry workflow asks for it
        code, output = _loadtest(url, tmp_path / "ws2", *impossible, *out)
        assert code == 1, output
        assert not json.loads((tmp_path / "chosen" / "summary.json").read_text())["passed"]
        assert "budget missed" in output and "requests/s < budget 1,000,000" in output
        assert "Locust: 1 user for 2 s" in output and "every budget met" not in output
        # The user's own requests: checked by sending the first, then sent in turn.
        keyed = {"Authorization": f"Bearer {KEY}"}
        examples = httpx.get(f"{url}/v1/models/twins/examples", headers=keyed, timeout=10)
        examples = examples.json()["examples"]
        mine = tmp_path / "mine.json"
        mine.write_text(json.dumps([e["request"] for e in examples[:2]]))
        quick = ("--users", "1", "--duration", "2s", *loose, "--requests", str(mine))
        code, output = _loadtest(url, tmp_path / "ws3", *quick)
        assert code == 0 and "every budget met" in output, output
        (report,) = (tmp_path / "ws3" / "reports").glob("loadtest-*")
        assert json.loads((report / "examples.json").read_text()) == json.loads(mine.read_text())
        mine.write_text(json.dumps([{"a": {"not_a_measure": 1.0}}]))
        code, output = _loadtest(url, tmp_path / "ws4", *quick)
        assert code == 2 and f"The first request of {mine} was answered 422" in output, output
        assert "Locust:" not in output  # refused before any load
