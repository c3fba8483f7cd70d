"""Decoded images by content address: a second read decodes nothing, other bytes decode again."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from modelcycle.config import assemble, compose_config
from modelcycle.data.bcss import BCSSSource, write_bcss_standin
from modelcycle.data.rice import RiceSource


def rice(tmp_path: Path, cache: Path | None, size: int = 16) -> RiceSource:
    return RiceSource(
        download_dir=tmp_path / "rice",
        synthetic=True,
        image_size=size,
        per_class_synthetic=4,
        cache_dir=cache,
    )


def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the image files decoded from now on (rice reads through `read_image_files`)."""
    import modelcycle.data.rice as module

    counted: list[int] = []
    real = module.read_image_files

    def counting(paths: list[Path], size: int, desc: str, *rest: Any) -> np.ndarray:
        counted.append(len(paths))
        return real(paths, size, desc, *rest)

    monkeypatch.setattr(module, "read_image_files", counting)
    return counted


def test_a_second_read_decodes_nothing_and_gives_the_same_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    counted = decodes(monkeypatch)
    first = rice(tmp_path, cache).load()
    second = rice(tmp_path, cache).load()
    assert counted == [20]  # 5 varieties × 4, decoded once
    assert np.array_equal(first.images, second.images) and first.data_hash == second.data_hash
    assert len(list(cache.glob("*.npy"))) == 1
    rice(tmp_path, cache, size=24).load()  # another size: another entry
    assert counted == [20, 20] and len(list(cache.glob("*.npy"))) == 2


def test_other_bytes_are_decoded_again_and_the_old_entry_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    before = rice(tmp_path, cache).load()
    counted = decodes(monkeypatch)
    grain = next((tmp_path / "rice" / "Rice_Image_Dataset" / "Arborio").glob("*.jpg"))
    Image.fromarray(np.full((250, 250, 3), 255, np.uint8)).save(grain)  # a white image
    after = rice(tmp_path, cache).load()
    assert counted == [20] and after.data_hash != before.data_hash
    assert not np.array_equal(after.images, before.images)
    assert len(list(cache.glob("*.npy"))) == 2


def test_an_unreadable_entry_is_said_and_decoded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    good = rice(tmp_path, cache).load()
    (entry,) = cache.glob("*.npy")
    entry.write_bytes(b"\x93NUMPY truncated")
    counted = decodes(monkeypatch)
    with caplog.at_level(logging.WARNING):
        again = rice(tmp_path, cache).load()
    assert counted == [20] and np.array_equal(again.images, good.images)
    assert "Cache entry" in caplog.text and "unreadable" in caplog.text
    assert np.array_equal(np.load(entry), good.images)  # the entry is whole again


def test_without_a_cache_every_read_decodes_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = decodes(monkeypatch)
    rice(tmp_path, None).load()
    rice(tmp_path, None).load()
    assert counted == [20, 20] and not list(tmp_path.rglob("*.npy"))


def test_bcss_tiles_and_masks_come_back_without_opening_an_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_bcss_standin(tmp_path / "bcss", slides=3, tiles=4, seed=0)
    cache = tmp_path / "cache"
    first = BCSSSource(root=root, image_size=32, cache_dir=cache).load()
    assert len(list(cache.glob("*.npy"))) == 2  # the tiles and the masks

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an image file was decoded")

    monkeypatch.setattr(Image, "open", refuse)
    second = BCSSSource(root=root, image_size=32, cache_dir=cache).load()
    assert first.masks is not None and second.masks is not None
    assert np.array_equal(first.images, second.images)
    assert np.array_equal(first.masks, second.masks)
    assert first.data_hash == second.data_hash
    assert np.array_equal(first.groups, second.groups)  # type: ignore[arg-type]


@pytest.mark.parametrize("experiment", ["image_rice", "image_flowers", "segmentation_bcss"])
def test_experiments_cache_decoded_images_in_the_workspace(
    experiment: str, workspace: Path
) -> None:
    source = assemble(compose_config([f"experiment={experiment}"])).task.source  # type: ignore[attr-defined]
    assert Path(source.cache_dir) == workspace.resolve() / "cache" / "decoded"


def test_threaded_decoding_keeps_the_files_order_and_stops_at_a_bad_file(tmp_path: Path) -> None:
    from modelcycle.data.image_set import read_image_files, resize_rgb
    from modelcycle.data.tables import DataError

    rng = np.random.default_rng(0)
    paths = []
    for i in range(40):
        path = tmp_path / f"{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    order = [paths[i] for i in rng.permutation(40)]
    one_by_one = np.stack([resize_rgb(Image.open(p), 8) for p in order])
    assert np.array_equal(read_image_files(order, 8, "test"), one_by_one)
    order[7].write_bytes(b"not a png")
    with pytest.raises(DataError, match=rf"{order[7].name}: not a readable image"):
        read_image_files(order, 8, "test")
