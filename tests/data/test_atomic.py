"""Files and folders replaced whole: the earlier one stays until the new one is complete."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from modelcycle.data import atomic
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
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # a system without it
    with pytest.raises(PermissionError), replacing_folder(path) as tmp:
        (tmp / "new.txt").write_text("new\n")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert [p.name for p in path.iterdir()] == ["old.txt"]


@pytest.mark.skipif(sys.platform != "linux", reason="renameat2 is Linux's")
def test_a_folder_is_exchanged_for_the_earlier_one_in_one_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two renames left a moment with no folder at the path, and after a kill between them
    # none at all (the earlier folder whole under a hidden name).
    renames: list[str] = []
    real_replace = os.replace

    def recorded(src: Any, dst: Any) -> None:
        renames.append(os.fspath(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recorded)
    path = tmp_path / "model"
    path.mkdir()
    (path / "old.txt").write_text("old\n")
    with replacing_folder(path) as tmp:
        (tmp / "new.txt").write_text("new\n")
    assert renames == []  # one exchange, no rename of the path away and back
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert [p.name for p in path.iterdir()] == ["new.txt"]


DEAD = 4_194_305  # above the largest pid Linux gives (pid_max is at most 2**22)


def test_what_a_killed_fill_left_is_put_back_or_removed_by_the_next_fill(tmp_path: Path) -> None:
    # A kill between the two renames left no folder, the earlier one whole under a hidden
    # name; a kill while filling left the half-filled folder. Nothing ever cleaned them.
    path = tmp_path / "model"
    earlier = tmp_path / f".model.old-{DEAD}-0a1b2c3d"
    earlier.mkdir()
    (earlier / "old.txt").write_text("old\n")
    half = tmp_path / f".model.new-{DEAD}-4e5f6a7b"
    half.mkdir()
    (half / "part.txt").write_text("par")
    running = tmp_path / f".model.new-{os.getpid()}-8c9d0e1f"  # a fill still running
    running.mkdir()
    other = tmp_path / f".modelx.new-{DEAD}-2a3b4c5d"  # another folder's: not this one's
    other.mkdir()
    with pytest.raises(OSError, match="disk full"), replacing_folder(path) as tmp:
        assert [p.name for p in path.iterdir()] == ["old.txt"]  # put back before the fill
        (tmp / "new.txt").write_text("new\n")
        raise OSError("disk full")
    assert [p.name for p in path.iterdir()] == ["old.txt"]  # a failed fill keeps it
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["model", running.name, other.name])
    stale = tmp_path / f".model.old-{DEAD}-6e7f8a9b"  # beside a whole folder: removed
    stale.mkdir()
    with replacing_folder(path) as tmp:
        (tmp / "new.txt").write_text("new\n")
    assert [p.name for p in path.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", running.name, other.name])
