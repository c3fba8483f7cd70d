"""Report folders: one per command, even for commands started within the same second."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from modelcycle.report_folders import ReportFolder, claimed, new_report_dir


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> str:
    """Every folder is named for the same second, as for commands started together."""
    monkeypatch.setattr(time, "strftime", lambda fmt, *at: "20260101-120000")
    return "20260101-120000"


def test_two_folders_named_in_one_second_are_two(tmp_path: Path, frozen: str) -> None:
    first, second = (
        new_report_dir(tmp_path, "drift-twins-v1"),
        new_report_dir(tmp_path, "drift-twins-v1"),
    )
    assert first.name == f"drift-twins-v1-{frozen}" and second.name == f"drift-twins-v1-{frozen}-2"
    assert first.is_dir() and second.is_dir()


def test_a_named_folder_is_made_only_when_claimed(tmp_path: Path, frozen: str) -> None:
    folder = ReportFolder(tmp_path / "reports", "sweep-s")
    assert folder.base == tmp_path / "reports" / f"sweep-s-{frozen}"
    assert not (tmp_path / "reports").exists()
    assert claimed(folder) == folder.base and claimed(folder).name == f"sweep-s-{frozen}-2"


def test_a_given_folder_is_used_as_it_is(tmp_path: Path) -> None:
    out = tmp_path / "chosen"
    assert claimed(out) == out and claimed(out) == out  # an --out folder may be reused
