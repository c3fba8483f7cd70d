"""Loading a version to serve: its local copy under the workspace, hash-checked and rebuilt."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from modelcycle.digests import sha256_file
from modelcycle.registry import COPY_MARKER
from modelcycle.servable import REFERENCE, read_manifest
from modelcycle.serving.loading import _lineage_summary, load_served, prune_copies
from serving_fixtures import ServedWorkspace


def test_a_cut_short_drift_reference_in_the_local_copy_is_copied_again(
    served_workspace: ServedWorkspace, tmp_path: Path
) -> None:
    # Only the ONNX was checked: a damaged reference.npz in the copy stayed, and the
    # server's drift checks failed on it until the copy was deleted by hand.
    registry = served_workspace.registry
    served = load_served(registry, "twins@champion", tmp_path, threads=1)
    assert served.directory is not None
    reference = served.directory / REFERENCE
    reference.write_bytes(reference.read_bytes()[:100])
    again = load_served(registry, "twins@champion", tmp_path, threads=1)
    assert again.directory is not None
    expected = read_manifest(again.directory)["files"][REFERENCE]
    assert sha256_file(again.directory / REFERENCE) == expected


def test_a_cut_short_marker_of_a_complete_copy_makes_a_new_copy(
    served_workspace: ServedWorkspace, tmp_path: Path
) -> None:
    # A kill while the marker was written left JSON cut short: every later start ended
    # in a JSONDecodeError traceback. The marker is now written whole, and read leniently.
    registry = served_workspace.registry
    load_served(registry, "twins@champion", tmp_path, threads=1)
    (marker,) = tmp_path.glob("twins-v*/.complete.json")
    marker.write_text(marker.read_text()[:10])
    served = load_served(registry, "twins@champion", tmp_path, threads=1)
    assert served.version == "1" and marker.read_text().endswith("}")
    assert [p.name for p in marker.parent.glob(".*complete*")] == [".complete.json"]


def test_the_lineage_summary_names_a_task_packages_own_commit() -> None:
    # `GET /v1/models` gave modelcycle's git SHA only: for a task from another package that
    # is not the code of the model, and a dirty checkout looked clean.
    packages_git = {"blobs": {"git_sha": "b" * 40, "git_dirty": "True", "editable": "True"}}
    tags = {
        "lineage.git_sha": "a" * 40,
        "lineage.git_dirty": "False",
        "lineage.packages": json.dumps({"modelcycle": "0.1.0", "blobs": "0.2.0"}),
        "lineage.packages_git": json.dumps(packages_git),
        "export.fp32.sha256": "f" * 64,
    }
    assert _lineage_summary(tags, "fp32") == {
        "git_sha": "a" * 40,
        "git_dirty": "False",
        "fp32.sha256": "f" * 64,
        "blobs.version": "0.2.0",
        "blobs.git_sha": "b" * 40,
        "blobs.git_dirty": "True",
        "variant": "fp32",
    }
    # a version registered before the tag existed, or with a damaged one, lists no package
    for old in ({}, {"lineage.packages_git": "not json"}, {"lineage.packages_git": "[1]"}):
        assert _lineage_summary(old, "fp32") == {"variant": "fp32"}


def _copy(cache: Path, name: str, hours_ago: float, marker: bool = True) -> Path:
    folder = cache / name
    (folder / "model").mkdir(parents=True)
    if marker:
        (folder / COPY_MARKER).write_text("{}")
        when = time.time() - hours_ago * 3600
        os.utime(folder / COPY_MARKER, (when, when))
    return folder


def test_copies_of_versions_loaded_long_ago_are_removed_beyond_the_newest(tmp_path: Path) -> None:
    # A server following its alias kept a copy of every version it was moved to.
    ages = {"twins-v1": 5, "twins-v2": 4, "twins-v3": 3, "twins-v4": 2, "twins-v5": 0.01}
    folders = {name: _copy(tmp_path, name, hours) for name, hours in ages.items()}
    unfinished = _copy(tmp_path, "twins-v6", 9, marker=False)  # being copied, or cut short
    other = _copy(tmp_path, "twins-v1-v1", 9)  # another model's (named twins-v1)
    removed = prune_copies(tmp_path, "twins", keep=folders["twins-v1"])
    assert removed == [folders["twins-v2"]]  # v5, v4, v3 newest; v1 still served
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"twins-v1", "twins-v3", "twins-v4", "twins-v5", unfinished.name, other.name}
    # one loaded recently stays even beyond the newest (v4): a server may still read its files
    again = prune_copies(tmp_path, "twins", copies=1, after=2.5 * 3600)
    assert again == [folders["twins-v3"], folders["twins-v1"]]


def test_loading_a_version_prunes_the_models_old_copies(
    served_workspace: ServedWorkspace, tmp_path: Path
) -> None:
    old = [_copy(tmp_path, f"twins-v{n}", hours) for n, hours in ((7, 2), (8, 3), (9, 4))]
    load_served(served_workspace.registry, "twins@champion", tmp_path, threads=1)
    assert {p.name for p in tmp_path.iterdir()} == {"twins-v1", "twins-v7", "twins-v8"}
    assert not old[2].exists()
