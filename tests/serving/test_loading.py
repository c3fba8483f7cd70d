"""Loading a version to serve: its local copy under the workspace, hash-checked and rebuilt."""

from __future__ import annotations

import json
from pathlib import Path

from modelcycle.digests import sha256_file
from modelcycle.servable import REFERENCE, read_manifest
from modelcycle.serving.loading import _lineage_summary, load_served
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
