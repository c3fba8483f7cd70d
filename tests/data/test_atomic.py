"""Files replaced whole: the earlier file stays until the new one is complete."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelcycle.data.atomic import replacing


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
