"""A server runs ONNX Runtime only: it starts, predicts and checks drift with torch unimportable.

Every built-in task's serving adapter lives apart from its training code, so `modelcycle
serve` imports neither torch nor Lightning (seconds less to start, per worker too). The
server here runs in a fresh interpreter where importing torch, Lightning, timm or
torchvision raises ImportError.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from image_fixtures import publish_image
from modelcycle.tracking import Tracker, TrackingSettings
from server_process import free_port, started
from serving_fixtures import ServedWorkspace

BLOCKED = ("torch", "lightning", "timm", "torchvision", "torch_geometric", "monai")

#: `modelcycle ARGS` with the training libraries unimportable, as if not installed (an entry
#: of None in sys.modules would also block them, but libraries that look there would break).
WITHOUT_TORCH = (
    "import sys\n"
    "class Absent:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    f"        if name.partition('.')[0] in {BLOCKED!r}:\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "sys.meta_path.insert(0, Absent())\n"
    "sys.argv = ['modelcycle', *sys.argv[1:]]\n"
    "from modelcycle.__main__ import main\n"
    "main()\n"
)


def serve_without_torch(root: Path, port: int, reference: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        WITHOUT_TORCH,
        "serve",
        reference,
        f"workspace={root}",
        f"serve.port={port}",
        "serve.host=127.0.0.1",
        "monitor.interval_seconds=0.5",  # a drift check soon after the requests
        "monitor.window=40",
        "monitor.min_captures=30",
    ]


def drift_without_torch(root: Path, model: str, log: Path) -> dict[str, Any]:
    """Serve `model@champion` from `root` where torch cannot be imported, answer 40 of its
    examples (the web page too), and return its first drift check's summary."""
    port = free_port()
    command = serve_without_torch(root, port, f"{model}@champion")
    with (
        started(command, log, f"http://127.0.0.1:{port}") as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        assert client.get("/").status_code == 200  # the web page
        listed = client.get(f"/v1/models/{model}/examples").json()["examples"]
        bodies = [e["request"] for e in listed]
        assert bodies, server.output()
        for i in range(40):
            answer = client.post(f"/v1/models/{model}/predict", json=bodies[i % len(bodies)])
            assert answer.status_code == 200, answer.text
            assert answer.json()["version"] == "1"
        deadline = time.monotonic() + 30
        while (summary := client.get(f"/v1/models/{model}/drift").json())["n_current"] < 30:
            assert time.monotonic() < deadline, f"no drift check; {server.output()}"
            time.sleep(0.25)
    assert summary["status"] in ("no_drift", "drift"), summary
    assert "Traceback" not in log.read_text()
    result: dict[str, Any] = summary
    return result


@pytest.mark.slow  # the image model: a tiny rice task trained and exported first
@pytest.mark.parametrize("task", ["twins", "image"])
def test_a_server_predicts_and_checks_drift_without_torch(
    task: str, served_workspace: ServedWorkspace, tmp_path: Path
) -> None:
    if task == "twins":
        root = served_workspace.root
    else:
        root = publish_image(tmp_path, Tracker(TrackingSettings(), tmp_path / "ws")).root
    drift_without_torch(root, task, tmp_path / "server.log")


def test_each_built_in_adapter_is_the_one_its_task_names() -> None:
    # The table lets a server skip the tasks' training code; it must not drift from them.
    from modelcycle.serving.loading import adapter_class
    from modelcycle.tasks import BUILTIN, available_tasks, get_task

    assert set(BUILTIN) <= set(available_tasks())
    for name in available_tasks():
        assert adapter_class(name) is get_task(name).serving, name


def test_an_unknown_task_has_no_adapter() -> None:
    from modelcycle.serving.loading import adapter_class
    from modelcycle.tasks.base import UnknownTaskError

    with pytest.raises(UnknownTaskError, match="Unknown task 'nope'"):
        adapter_class("nope")
