"""Parcellations: the offline default from nilearn's bundled mask, and real atlases' errors."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from modelcycle.data import parcellations
from modelcycle.data.parcellations import load_parcellation, mni_kmeans
from modelcycle.data.tables import DataError


def test_the_offline_default_splits_the_bundled_brain_mask_reproducibly() -> None:
    atlas = mni_kmeans(16, 8)
    labels = np.asarray(atlas.labels_img.dataobj)
    assert atlas.n_parcels == 16 and set(np.unique(labels)) == set(range(17))
    mask = np.asarray(parcellations.brain_mask(8).dataobj) > 0
    assert np.array_equal(labels > 0, mask)  # every brain voxel, nothing outside
    mni_kmeans.cache_clear()
    assert mni_kmeans(16, 8).digest() == atlas.digest()  # same arguments, same atlas
    assert mni_kmeans(12, 8).digest() != atlas.digest()


def test_an_unknown_atlas_or_a_bad_parcel_count_names_the_fix() -> None:
    with pytest.raises(DataError, match="harvard-oxford"):
        load_parcellation("aal")
    with pytest.raises(DataError, match="n_parcels=1"):
        load_parcellation("mni-kmeans", n_parcels=1)


def test_a_real_atlas_comes_through_nilearns_fetcher(monkeypatch: pytest.MonkeyPatch) -> None:
    import nilearn.datasets

    labels = np.zeros((4, 4, 4), np.int16)
    labels[:2], labels[2:] = 1, 2
    image = nib.Nifti1Image(labels, np.eye(4))

    def fetched(**kwargs: object) -> SimpleNamespace:  # the network boundary
        assert kwargs["n_rois"] == 100 and kwargs["resolution_mm"] == 2
        return SimpleNamespace(maps=image, labels=["Background", "7Networks_LH_Vis_1", "b"])

    monkeypatch.setattr(nilearn.datasets, "fetch_atlas_schaefer_2018", fetched)
    atlas = load_parcellation("schaefer", n_parcels=100, resolution_mm=8)
    assert atlas.names == ("7Networks_LH_Vis_1", "b") and atlas.name == "schaefer-100"


def test_an_offline_fetch_says_to_use_the_bundled_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import nilearn.datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("Name or service not known")

    monkeypatch.setattr(nilearn.datasets, "fetch_atlas_harvard_oxford", offline)
    with pytest.raises(DataError, match=r"data\.atlas=mni-kmeans"):
        load_parcellation("harvard-oxford", data_dir=tmp_path)
