import shutil
from pathlib import Path

import openneuro
import pytest

from modelcycle.data.openneuro import MANIFEST_NAME
from modelcycle.data.qtim import DATASET_ID, STRUCTURAL_FILES, QTIMSource, fetch_structural


def copy_structural(src: Path, dst: Path) -> None:
    """Write what openneuro-py would: the files of STRUCTURAL_FILES, from a local copy."""
    for pattern in STRUCTURAL_FILES:
        for file in src.glob(pattern):
            target = dst / file.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)


def test_download_asks_openneuro_for_the_structural_files(
    real_qtim: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, object]] = []

    def fake_download(**kwargs: object) -> None:  # the network boundary
        calls.append(kwargs)
        copy_structural(real_qtim, Path(str(kwargs["target_dir"])))

    monkeypatch.setattr(openneuro, "download", fake_download)
    source = QTIMSource(root=None, download_dir=tmp_path / "dl")
    cohort = source.load()
    assert calls[0]["dataset"] == DATASET_ID
    assert list(calls[0]["include"]) == list(STRUCTURAL_FILES)  # type: ignore[call-overload]
    assert (tmp_path / "dl" / MANIFEST_NAME).is_file()
    assert len(cohort) == 1076
    # a second load reuses the download instead of fetching again
    fetch_structural(tmp_path / "dl")
    assert len(calls) == 1
