"""The three image datasets: real layouts, their quirks, label maps, splits and downloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from image_fixtures import tiny_sources
from modelcycle.data import flowers102
from modelcycle.data.flowers102 import Flowers102Source, local_flowers102
from modelcycle.data.image_set import stratified_holdout, stratified_kfold, subsample
from modelcycle.data.openneuro import MANIFEST_NAME, FetchError
from modelcycle.data.rice import FOLDER, RiceSource, write_rice_standin
from modelcycle.data.signmnist import (
    LETTERS,
    SignMNISTSource,
    read_signmnist_csv,
    write_signmnist_standin,
)
from modelcycle.data.tables import DataError


def test_rice_layout_lowercase_basmati_and_stray_citation_file(tmp_path: Path) -> None:
    write_rice_standin(tmp_path, per_class=3, seed=0)
    folder = tmp_path / FOLDER
    assert sorted(p.name for p in (folder / "Basmati").iterdir())[0] == "basmati (1).jpg"
    assert (folder / "Arborio" / "Arborio (1).jpg").is_file()
    assert (folder / "Rice_Citation_Request.txt").is_file()

    data = RiceSource(root=tmp_path, image_size=20).load()
    assert data.classes == ["Arborio", "Basmati", "Ipsala", "Jasmine", "Karacadag"]
    assert data.images.shape == (15, 20, 20, 3) and data.images.dtype == np.uint8
    assert data.class_counts()["Basmati"] == 3  # lowercase files are read
    assert data.notes == ["skipped Rice_Citation_Request.txt (not a class folder)"]
    assert data.split is None
    # a grain on black: the corners are dark, the centre is bright
    assert data.images[:, 0, 0].max() < 40 and data.images[:, 10, 10].mean() > 100


def _aspect(image: np.ndarray) -> float:
    """Length-to-width ratio of the bright blob, from its second moments."""
    y, x = np.nonzero(image.mean(axis=2) > 30)
    eigen = np.linalg.eigvalsh(np.cov(np.stack([x, y]).astype(float)))
    return float(np.sqrt(eigen[1] / eigen[0]))


def test_rice_varieties_differ_in_shape_while_areas_overlap(tmp_path: Path) -> None:
    data = RiceSource(root=write_rice_standin(tmp_path, per_class=12, seed=1), image_size=64).load()
    area = (data.images.mean(axis=3) > 30).mean(axis=(1, 2))
    aspect = np.array([_aspect(im) for im in data.images])
    basmati, karacadag = data.labels == 1, data.labels == 4
    assert aspect[basmati].mean() > 2.5 * aspect[karacadag].mean()  # long vs round
    # areas overlap: a histogram of brightness cannot tell these two apart
    assert (
        area[basmati].max() > area[karacadag].min() and area[karacadag].max() > area[basmati].min()
    )


def test_rice_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="Rice_Image_Dataset/<Class>"):
        RiceSource(root=tmp_path).load()
    with pytest.raises(DataError, match=r"data.root=.*nowhere is not a directory"):
        RiceSource(root=tmp_path / "nowhere").load()
    (tmp_path / FOLDER / "Arborio").mkdir(parents=True)
    (tmp_path / FOLDER / "Arborio" / "Arborio (1).jpg").write_bytes(b"not a jpeg")
    (tmp_path / FOLDER / "Basmati").mkdir()
    (tmp_path / FOLDER / "Basmati" / "basmati (1).jpg").write_bytes(b"not a jpeg either")
    with pytest.raises(DataError, match=r"Arborio \(1\).jpg: not a readable image"):
        RiceSource(root=tmp_path).load()


def test_rice_hidden_folders_are_no_classes_and_empty_class_folders_are_named(
    tmp_path: Path,
) -> None:
    folder = write_rice_standin(tmp_path, per_class=2, seed=0) / FOLDER
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".DS_Store").write_bytes(b"")
    data = RiceSource(root=tmp_path, image_size=8).load()
    assert data.classes == ["Arborio", "Basmati", "Ipsala", "Jasmine", "Karacadag"]
    assert "skipped .ipynb_checkpoints (hidden)" in data.notes
    (folder / "Empty").mkdir()
    (folder / "Empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"Rice_Image_Dataset: class folder\(s\) Empty hold no"):
        RiceSource(root=tmp_path, image_size=8).load()


def test_rice_reads_jpeg_and_png_files_in_any_case(tmp_path: Path) -> None:
    from PIL import Image

    folder = write_rice_standin(tmp_path, per_class=2, seed=0) / FOLDER
    grain = np.asarray(Image.open(folder / "Arborio" / "Arborio (1).jpg"))
    for name, suffixes in {"Arborio": [".jpeg", ".PNG"], "Basmati": [".png", ".JPG"]}.items():
        for old in (folder / name).iterdir():
            old.unlink()
        for i, suffix in enumerate(suffixes):
            Image.fromarray(grain).save(
                folder / name / f"{name} ({i}){suffix}", suffix[1:].upper().replace("JPG", "JPEG")
            )
    for name in ("Ipsala", "Jasmine", "Karacadag"):
        for old in (folder / name).iterdir():
            old.unlink()
        (folder / name).rmdir()
    data = RiceSource(root=tmp_path, image_size=8).load()
    assert data.class_counts() == {"Arborio": 2, "Basmati": 2}


def test_flowers_standin_is_the_real_layout_and_loads_through_torchvision(tmp_path: Path) -> None:
    source = Flowers102Source(
        download_dir=tmp_path,
        synthetic=True,
        image_size=16,
        synthetic_classes=3,
        synthetic_per_split=[2, 1, 3],
    )
    data = source.load()
    base = tmp_path / "flowers-102"
    assert (base / "jpg" / "image_00001.jpg").is_file() and len(
        list((base / "jpg").iterdir())
    ) == 18
    from scipy.io import loadmat

    assert loadmat(base / "imagelabels.mat")["labels"].shape == (1, 18)
    assert set(loadmat(base / "setid.mat")) >= {"trnid", "valid", "tstid"}
    assert data.classes == ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]
    split = np.asarray(data.split)
    counts = {part: int((split == part).sum()) for part in ("train", "val", "test")}
    assert counts == {"train": 6, "val": 3, "test": 9}
    assert np.bincount(data.labels[data.split == "test"]).tolist() == [3, 3, 3]
    # torchvision's own class refuses the stand-in (MD5 of the .mat files): hence the subclass
    from torchvision.datasets import Flowers102

    with pytest.raises(RuntimeError, match="not found or corrupted"):
        Flowers102(str(tmp_path), split="train")
    assert len(local_flowers102(tmp_path, "test")) == 9
    (base / "setid.mat").unlink()
    with pytest.raises(DataError, match=r"setid\.mat"):
        local_flowers102(tmp_path, "train")


def test_signmnist_csv_format_and_24_letter_label_map(tmp_path: Path) -> None:
    data = SignMNISTSource(
        download_dir=tmp_path, synthetic=True, image_size=28, synthetic_per_class=[3, 2]
    ).load()
    table = pd.read_csv(tmp_path / "sign_mnist_train.csv")
    assert list(table.columns[:3]) == ["label", "pixel1", "pixel2"] and table.shape[1] == 785
    assert sorted(table["label"].unique()) == [*range(9), *range(10, 25)]  # no 9 (J)
    assert len(data.classes) == 24 and "J" not in data.classes and "Z" not in data.classes
    # label 10 in the file is K, the tenth class
    x, y = read_signmnist_csv(tmp_path / "sign_mnist_train.csv")
    k_row = int(np.flatnonzero(y == 10)[0])
    assert data.classes[data.labels[k_row]] == "K" == LETTERS[9]
    assert np.array_equal(data.images[k_row, :, :, 0], x[k_row])  # gray copied to RGB at 28 px
    split = np.asarray(data.split)
    assert (split == "test").sum() == 48 and (split == "train").sum() == 72


def test_signmnist_rejects_bad_labels_and_finds_csvs_in_folders(tmp_path: Path) -> None:
    write_signmnist_standin(tmp_path, (1, 1), seed=0)  # a copy with no stand-in record
    (tmp_path / "sign_mnist_test").mkdir()
    (tmp_path / "sign_mnist_test.csv").rename(tmp_path / "sign_mnist_test" / "sign_mnist_test.csv")
    assert len(SignMNISTSource(root=tmp_path).load()) == 48
    table = pd.read_csv(tmp_path / "sign_mnist_train.csv")
    table.loc[0, "label"] = 9
    table.to_csv(tmp_path / "sign_mnist_train.csv", index=False)
    with pytest.raises(DataError, match=r"label\(s\) \[9\] are not letters"):
        SignMNISTSource(root=tmp_path).load()


@pytest.mark.parametrize("damage", ["cut", "empty", "text"])
def test_signmnist_names_the_first_row_with_missing_pixels(tmp_path: Path, damage: str) -> None:
    SignMNISTSource(download_dir=tmp_path, synthetic=True, synthetic_per_class=[1, 1]).load()
    path = tmp_path / "sign_mnist_train.csv"
    lines = path.read_text().splitlines()
    cells = lines[3].split(",")
    if damage == "cut":  # the last row cut mid-line
        lines[-1] = lines[-1][: len(lines[-1]) // 2]
        line = len(lines)
    else:
        cells[400] = "" if damage == "empty" else "x"
        lines[3] = ",".join(cells)
        line = 4
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"sign_mnist_train.csv: line {line} has empty or non"):
        read_signmnist_csv(path)


def test_max_per_class_subsamples_each_class_reproducibly(tmp_path: Path) -> None:
    root = write_rice_standin(tmp_path, per_class=5, seed=0)
    a = RiceSource(root=root, image_size=8, max_per_class=2, seed=3).load()
    b = RiceSource(root=root, image_size=8, max_per_class=2, seed=3).load()
    assert a.class_counts() == dict.fromkeys(a.classes, 2)
    assert np.array_equal(a.images, b.images)
    assert subsample(np.array([0, 0, 1]), None, 0).tolist() == [0, 1, 2]


def test_stratified_splits_are_disjoint_and_cover_every_class() -> None:
    labels = np.repeat(np.arange(4), [10, 7, 5, 3])
    parts = stratified_kfold(labels, 3, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
    for part in parts:
        assert set(labels[part]) == {0, 1, 2, 3}
    kept, held = stratified_holdout(labels, np.arange(len(labels)), 0.2, seed=1)
    assert not set(kept) & set(held) and set(labels[held]) == set(labels[kept]) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match=r"smallest class size \(3\), or cv.n_folds=1"):
        stratified_kfold(labels, 4, seed=0)


def test_kaggle_download_is_hashed_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def download(handle: str, output_dir: str, **kwargs: Any) -> str:
        calls.append(handle)
        write_rice_standin(Path(output_dir), per_class=2, seed=0)  # what the network returns
        return output_dir

    import kagglehub

    monkeypatch.setattr(kagglehub, "dataset_download", download)
    source = RiceSource(download_dir=tmp_path / "rice", image_size=8)
    assert len(source.load()) == 10 and calls == ["muratkokludataset/rice-image-dataset"]
    manifest = (tmp_path / "rice" / MANIFEST_NAME).read_text()
    assert "Basmati/basmati (1).jpg" in manifest and "Rice_Citation_Request.txt" in manifest
    source.load()
    assert len(calls) == 1  # present: not downloaded again


def test_kaggle_failure_names_the_dataset_and_the_offline_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(handle: str, **kwargs: Any) -> str:
        raise ConnectionError("Name or service not known.")

    import kagglehub

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    with pytest.raises(FetchError, match=r"datamunge/sign-language-mnist.*--synthetic") as err:
        SignMNISTSource(download_dir=tmp_path).load()
    assert "not known. Check the network" in str(err.value)  # one full stop, not two


@pytest.mark.parametrize(
    ("labels", "separable"),
    [([0, 3, 6, 9, 12, 15], True), ([3, 3 + 17, 3 + 34, 3 + 51, 3 + 68, 3 + 85], False)],
)
def test_flowers_standin_classes_sharing_a_hue_differ_only_in_petals(
    labels: list[int], separable: bool
) -> None:
    from modelcycle.data.image_set import ImageSet
    from modelcycle.tasks.image import nearest_class_mean

    rng = np.random.default_rng(0)
    per_class = 12
    images = np.stack(
        [flowers102._flower(rng, label) for label in labels for _ in range(per_class)]
    )
    y = np.repeat(np.arange(len(labels)), per_class)
    data = ImageSet(images, y, [str(label) for label in labels])
    test = np.flatnonzero(np.arange(len(y)) % per_class < 4)
    train = np.setdiff1d(np.arange(len(y)), test)
    accuracy = (nearest_class_mean(data, train, test).argmax(1) == y[test]).mean()
    # six hues: colour histograms tell them apart; one hue with 3..8 petals: they cannot
    assert accuracy > 0.9 if separable else accuracy < 0.5


def test_flowers_download_goes_through_torchvision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets.flowers102 as tv

    fetched: list[str] = []

    def archive(url: str, download_root: str, **kwargs: Any) -> None:
        fetched.append(url.rsplit("/", 1)[1])
        flowers102.write_flowers_standin(Path(download_root).parent, 2, (1, 1, 1), seed=0)

    monkeypatch.setattr(tv, "download_and_extract_archive", archive)
    monkeypatch.setattr(
        tv, "download_url", lambda url, root, **kw: fetched.append(url.rsplit("/", 1)[1])
    )
    # offline bytes cannot match the real MD5s; everything up to that check is torchvision's
    monkeypatch.setattr(tv, "check_integrity", lambda path, md5=None: Path(path).is_file())
    data = Flowers102Source(download_dir=tmp_path, image_size=8).load()
    assert fetched == ["102flowers.tgz", "imagelabels.mat", "setid.mat"] and len(data) == 6
    assert "flowers-102/setid.mat" in (tmp_path / MANIFEST_NAME).read_text()


def test_flowers_download_failure_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.flowers102 as tv

    def offline(*args: Any, **kwargs: Any) -> None:
        raise OSError("Network is unreachable")

    monkeypatch.setattr(tv, "download_and_extract_archive", offline)
    with pytest.raises(FetchError, match=r"Flowers-102 .*Network is unreachable.*--synthetic"):
        Flowers102Source(download_dir=tmp_path).load()


def test_tiny_sources_load(tmp_path: Path) -> None:
    for name, source in tiny_sources(tmp_path).items():
        data = source.load()
        assert data.images.shape[1:] == (24, 24, 3), name
        assert (
            data.data_hash
            and len(data.classes) == {"rice": 5, "flowers102": 4, "signmnist": 24}[name]
        )
