"""A real `modelcycle serve` from a workspace mounted read-only: a shared registry.

The workspace is bind-mounted read-only in a mount namespace of the server's own
(util-linux `unshare --map-root-user --mount`, then `mount -o remount,bind,ro`), as a
container sees a volume mounted `:ro`; the tests run as root, which file permissions would
not stop. The registry outside the namespace stays writable, as a training machine's is.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from modelcycle.monitoring.capture import CaptureStore
from server_process import examples, free_port, serve_command, started, wait_for
from serving_fixtures import ServedWorkspace

pytestmark = pytest.mark.slow

#: `sh -c` script: mount the workspace ($0) read-only over itself, then become the server.
READ_ONLY = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


def read_only(root: Path, command: list[str]) -> list[str]:
    """`command` run where `root` is mounted read-only (a namespace of its own)."""
    return ["unshare", "--map-root-user", "--mount", "sh", "-c", READ_ONLY, str(root), *command]


def test_the_mount_is_read_only_for_the_server_and_writable_outside(tmp_path: Path) -> None:
    # What the tests below rest on: a write under the mount fails in the namespace only.
    (tmp_path / "ws").mkdir()
    inside = subprocess.run(
        read_only(tmp_path / "ws", ["touch", str(tmp_path / "ws" / "x")]),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert inside.returncode != 0 and "Read-only file system" in inside.stderr, inside
    (tmp_path / "ws" / "x").touch()


def test_a_read_only_workspace_is_refused_naming_the_settings_that_move_the_servers_files(
    served_workspace: ServedWorkspace, tmp_path: Path
) -> None:
    # It ended in "/ws/serving: Read-only file system", naming no setting.
    root = served_workspace.root
    for extra, said in [
        ((), f"serve.cache_dir: {root / 'serving'} cannot be written (Read-only file system)"),
        (
            (f"serve.cache_dir={tmp_path / 'copies'}",),
            f"serve.capture_path: {root / 'capture.db'} cannot be written (Read-only file",
        ),
    ]:
        command = read_only(root, serve_command(root, free_port(), *extra))
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        output = " ".join((done.stdout + done.stderr).split())
        assert done.returncode == 2 and said in output, output
        assert "Traceback" not in output


def test_a_read_only_registry_is_served_and_follows_an_alias_moved_outside(
    two_versions: ServedWorkspace, tmp_path: Path
) -> None:
    root, port = two_versions.root, free_port()
    assert not (root / "serving").exists() and not (root / "capture.db").exists()
    copies, captures = tmp_path / "copies", tmp_path / "captures" / "capture.db"
    extra = (f"serve.cache_dir={copies}", f"serve.capture_path={captures}")
    command = read_only(root, serve_command(root, port, *extra, "serve.reload_seconds=0.5"))
    with started(command, tmp_path / "server.log", f"http://127.0.0.1:{port}") as server:
        body = examples(server)[0]
        answer = httpx.post(f"{server.url}/v1/models/twins/predict", json=body, timeout=10)
        assert answer.status_code == 200 and answer.json()["version"] == "1", server.output()
        two_versions.registry.promote("twins")  # version 2, written outside the namespace

        def version() -> str:
            got = httpx.post(f"{server.url}/v1/models/twins/predict", json=body, timeout=10)
            assert got.status_code == 200, got.text
            return str(got.json()["version"])

        wait_for(lambda: version() == "2", 60.0, "the alias move to be served", server)
    assert not (root / "serving").exists() and not (root / "capture.db").exists()
    assert {p.name for p in copies.iterdir()} >= {"twins-v1", "twins-v2"}
    with CaptureStore(captures) as store:
        assert {r.version for r in store.read(model="twins")} >= {"1", "2"}
