"""BCSS tiles: the real layout and file names, the two tilings' mask codes, slide groups."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from modelcycle.cli import app
from modelcycle.data.bcss import HANDLE, SLIDE, VARIANTS, BCSSSource, write_bcss_standin
from modelcycle.data.image_set import IGNORE
from modelcycle.data.tables import DataError

runner = CliRunner()
#: The real file naming (one of the 224 px tiles' names).
REAL_NAME = "TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0_448_2240_size224.png"


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bcss_standin(tmp_path_factory.mktemp("bcss"), slides=4, tiles=6, seed=0)


def test_the_standin_has_the_real_folders_and_file_names(standin: Path) -> None:
    for folder in ("train", "val", "test", "train_mask", "val_mask"):
        assert (standin / "BCSS" / folder).is_dir(), folder
    for folder in ("train_512", "val_512", "train_mask_512", "val_mask_512"):
        assert (standin / "BCSS_512" / folder).is_dir(), folder
    pattern = re.compile(r"^TCGA-\w\w-\w{4}-DX1_xmin\d+_ymin\d+_MPP-0_\d+_\d+_size(224|512)\.png$")
    assert pattern.match(REAL_NAME)
    names = [p.name for p in standin.rglob("*.png")]
    assert names and all(pattern.match(n) for n in names), names[:3]
    for tile in (standin / "BCSS" / "train").glob("*.png"):
        mask = np.asarray(Image.open(standin / "BCSS" / "train_mask" / tile.name))
        assert mask.shape == (224, 224) and set(np.unique(mask)) <= {0, 1, 2}
    assert not list((standin / "BCSS").glob("test_mask*"))  # the real test tiles have none


def test_224_tiles_read_with_masks_and_slides(standin: Path) -> None:
    data = BCSSSource(root=standin, image_size=32).load()
    n_labelled = len(list((standin / "BCSS" / "train").glob("*.png"))) + len(
        list((standin / "BCSS" / "val").glob("*.png"))
    )
    assert data.masks is not None and data.groups is not None
    assert data.images.shape == (n_labelled, 32, 32, 3) and data.masks.shape == (n_labelled, 32, 32)
    assert data.classes == ["other", "tumor", "stroma"]
    assert set(np.unique(data.masks)) == {0, 1, 2}
    assert len(set(data.groups)) == 4 and all(SLIDE.match(g) for g in data.groups)
    n_test = len(list((standin / "BCSS" / "test").glob("*.png")))
    assert f"skipped {n_test} tiles of test/ (no masks)" in data.notes
    # each tile's label is its mask's most frequent class
    counts = np.stack([(data.masks == c).sum(axis=(1, 2)) for c in range(3)], axis=1)
    assert (data.labels == counts.argmax(axis=1)).all()


def test_512_masks_group_bcss_codes_into_five_classes_and_ignore_outside(standin: Path) -> None:
    data = BCSSSource(root=standin, image_size=64, tile=512).load()
    assert data.classes == ["tumor", "stroma", "inflammatory", "necrosis", "other"]
    assert data.masks is not None
    assert (data.masks[:, :, :2] == IGNORE).all()  # the stand-in's border is coded 0: outside
    codes = VARIANTS[512].codes
    assert codes[0] == codes[7] == IGNORE
    assert codes[1] == codes[19] == codes[20] == 0  # tumour, angioinvasion, dcis
    assert codes[3] == codes[10] == codes[11] == 2  # the immune infiltrates
    assert {codes[c] for c in (5, 6, 8, 9, 12, 13, 14, 15, 16, 17, 18, 21)} == {4}


def test_a_mask_value_the_tiling_does_not_define_is_named(standin: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(standin / "BCSS", copy / "BCSS")
    bad = next((copy / "BCSS" / "train_mask").glob("*.png"))
    Image.fromarray(np.full((224, 224), 7, np.uint8)).save(bad)  # a 512-tiling code
    with pytest.raises(DataError, match=rf"{bad.name}: mask values \[7\].*data.tile"):
        BCSSSource(root=copy, image_size=32).load()


def test_a_tile_without_its_mask_is_named(standin: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(standin / "BCSS", copy / "BCSS")
    gone = next((copy / "BCSS" / "val_mask").glob("*.png"))
    gone.unlink()
    with pytest.raises(DataError, match=rf"no mask for 1 tile\(s\) of val/, e.g. {gone.name}"):
        BCSSSource(root=copy, image_size=32).load()


def test_a_copy_unpacked_one_folder_down_is_found(standin: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(standin / "BCSS", tmp_path / "archive" / "BCSS")
    source = BCSSSource(root=tmp_path, image_size=32)
    assert source.present(tmp_path) and len(source.load()) > 0


def test_a_copy_without_the_folder_says_what_it_needs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"BCSS not found.*Point data.root"):
        BCSSSource(root=tmp_path, image_size=32).load()
    with pytest.raises(DataError, match=r"data.tile=300: give one of 224, 512"):
        BCSSSource(root=tmp_path, tile=300)


def test_data_fetch_bcss_synthetic_writes_the_real_layout(tmp_path: Path, workspace: Path) -> None:
    result = runner.invoke(app, ["data", "fetch", "bcss", "--synthetic", "--dest", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert next((tmp_path / "BCSS" / "train_mask").glob("TCGA-*_size224.png")).is_file()


def test_data_fetch_bcss_offline_is_one_clear_line(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kagglehub

    asked: list[str] = []

    def offline(handle: str, **kwargs: Any) -> str:
        asked.append(handle)
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    result = runner.invoke(app, ["data", "fetch", "bcss"])
    assert asked == [HANDLE] == ["whats2000/breast-cancer-semantic-segmentation-bcss"]
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert HANDLE in result.output and "--synthetic" in result.output
