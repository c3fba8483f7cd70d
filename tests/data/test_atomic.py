"""Files and folders replaced whole: the earlier one stays until the new one is complete."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from modelcycle.data.atomic import replacing, replacing_folder


def test_a_finished_write_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "table.tsv"
    path.write_text("old\n")
    with replacing(path) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".tsv" and tmp.name.startswith(".")
        tmp.write_text("new\n")
        assert path.read_text() == "old\n"  # a reader meanwhile finds the earlier file
    assert path.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.tsv"]


@pytest.mark.parametrize("stop", [OSError("No space left on device"), KeyboardInterrupt()])
@pytest.mark.parametrize("earlier", [True, False], ids=["earlier file", "no earlier file"])
def test_a_write_stopped_halfway_leaves_the_earlier_file_and_no_temporary_one(
    tmp_path: Path, stop: BaseException, earlier: bool
) -> None:
    path = tmp_path / "table.tsv"
    if earlier:
        path.write_text("old\n")
    with pytest.raises(type(stop)), replacing(path) as tmp:
        tmp.write_text("half a ro")
        raise stop
    assert [p.name for p in tmp_path.iterdir()] == (["table.tsv"] if earlier else [])
    assert not earlier or path.read_text() == "old\n"


def test_a_finished_folder_replaces_the_earlier_one_whole(tmp_path: Path) -> None:
    path = tmp_path / "model"
    path.mkdir()
    (path / "old.txt").write_text("old\n")
    with replacing_folder(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and not any(tmp.iterdir())
        (tmp / "new.txt").write_text("new\n")
        assert [p.name for p in path.iterdir()] == ["old.txt"]  # a reader meanwhile
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert [p.name for p in path.iterdir()] == ["new.txt"]


def test_a_folder_that_cannot_be_renamed_into_place_puts_the_earlier_one_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace

    def refuse_the_new_folder(src: Any, dst: Any) -> None:
        if ".new-" in os.fspath(src):
            raise PermissionError(f"{src} is in use")
        real_replace(src, dst)

    path = tmp_path / "model"
    path.mkdir()
    (path / "old.txt").write_text("old\n")
    monkeypatch.setattr(os, "replace", refuse_the_new_folder)
    with pytest.raises(PermissionError), replacing_folder(path) as tmp:
        (tmp / "new.txt").write_text("new\n")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert [p.name for p in path.iterdir()] == ["old.txt"]
