"""Parcel series and connectomes: a planted connection is recovered, the cache, failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from modelcycle.data.bids_index import RestRun, index_rest_runs, pick_runs
from modelcycle.data.connectomes import (
    MaskerSettings,
    connectomes,
    extract_timeseries,
    prepare_timeseries,
)
from modelcycle.data.parcellations import Parcellation

TR = 2.0
SETTINGS = MaskerSettings(min_volumes=30)


@pytest.fixture(scope="module")
def atlas() -> Parcellation:
    """Three slab parcels on a 6×6×6 grid of 4 mm voxels."""
    labels = np.zeros((6, 6, 6), dtype=np.int16)
    labels[1:5, 1:5, 0:2], labels[1:5, 1:5, 2:4], labels[1:5, 1:5, 4:6] = 1, 2, 3
    image = nib.Nifti1Image(labels, np.diag([4.0, 4.0, 4.0, 1.0]))
    return Parcellation("slabs", image, ("p1", "p2", "p3"))


def _slow_signal(rng: np.random.Generator, n: int) -> np.ndarray:
    """A random mixture of sinusoids inside the 0.01-0.1 Hz band the masker keeps."""
    t = np.arange(n) * TR
    freqs = rng.uniform(0.015, 0.09, size=8)
    phases = rng.uniform(0, 2 * np.pi, size=8)
    return np.sin(2 * np.pi * np.outer(t, freqs) + phases).sum(axis=1)


def _write_run(
    folder: Path, subject: str, atlas: Parcellation, n: int = 120, seed: int = 0
) -> RestRun:
    """Parcel 2 follows parcel 1 (r ≈ 0.9 planted); parcel 3 is independent."""
    rng = np.random.default_rng(seed)
    shared, other = _slow_signal(rng, n), _slow_signal(rng, n)
    parcel = {1: shared, 2: 0.9 * shared + 0.45 * _slow_signal(rng, n), 3: other}
    labels = np.asarray(atlas.labels_img.dataobj)
    data = np.zeros((*labels.shape, n), dtype=np.float32)
    for label, series in parcel.items():
        voxels = labels == label
        noise = rng.normal(scale=1.0, size=(int(voxels.sum()), n))
        data[voxels] = 500 + 10 * (series + noise) + np.linspace(0, 20, n)  # + drift
    path = folder / f"{subject}_ses-01_task-rest_bold.nii.gz"
    folder.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(data.astype(np.int16), atlas.labels_img.affine).to_filename(path)
    return RestRun(subject, "ses-01", 1, path, TR, None, False)


def test_masker_and_connectome_recover_a_planted_connection(
    atlas: Parcellation, tmp_path: Path
) -> None:
    run = _write_run(tmp_path, "sub-01", atlas)
    series = extract_timeseries(run, atlas, SETTINGS)
    assert series.shape == (120, 3)
    C = connectomes([series], "correlation")[0]
    assert C[0, 1] > 0.8
    assert abs(C[0, 2]) < 0.4 and abs(C[1, 2]) < 0.4


@pytest.mark.parametrize("kind", ["correlation", "partial correlation", "tangent"])
def test_every_connectivity_kind_gives_symmetric_matrices(
    atlas: Parcellation, tmp_path: Path, kind: str
) -> None:
    runs = [_write_run(tmp_path, f"sub-0{i}", atlas, seed=i) for i in range(3)]
    C = connectomes([extract_timeseries(r, atlas, SETTINGS) for r in runs], kind)
    assert C.shape == (3, 3, 3)
    assert np.allclose(C, C.transpose(0, 2, 1), atol=1e-6)


def test_a_rerun_comes_from_the_cache_and_a_changed_input_or_parameter_recomputes(
    atlas: Parcellation, tmp_path: Path
) -> None:
    runs = {
        f"sub-0{i}": _write_run(tmp_path / "bids", f"sub-0{i}", atlas, seed=i) for i in range(3)
    }
    cache = tmp_path / "cache"
    first = prepare_timeseries(runs, atlas, SETTINGS, cache, progress=False)
    assert (first.cached, first.computed) == (0, 3)
    again = prepare_timeseries(runs, atlas, SETTINGS, cache, progress=False)
    assert (again.cached, again.computed) == (3, 0)
    assert all(
        np.array_equal(a, b) for a, b in zip(first.timeseries, again.timeseries, strict=True)
    )
    assert again.digest() == first.digest()
    changed = MaskerSettings(min_volumes=30, low_pass=0.08)
    other = prepare_timeseries(runs, atlas, changed, cache, progress=False)
    assert (other.cached, other.computed) == (0, 3)
    _write_run(tmp_path / "bids", "sub-01", atlas, seed=99)  # new bytes, same file name
    edited = prepare_timeseries(runs, atlas, SETTINGS, cache, progress=False)
    assert (edited.cached, edited.computed) == (2, 1)
    assert edited.digest() != first.digest()


def test_unusable_runs_are_skipped_counted_and_named_while_the_rest_proceeds(
    atlas: Parcellation, tmp_path: Path
) -> None:
    folder = tmp_path / "bids"
    runs = {f"sub-0{i}": _write_run(folder, f"sub-0{i}", atlas, seed=i) for i in range(2)}
    truncated = _write_run(folder, "sub-07", atlas, seed=7)
    content = truncated.bold.read_bytes()
    truncated.bold.write_bytes(content[: len(content) // 2])  # a download cut short
    three_d = folder / "sub-08_ses-01_task-rest_bold.nii.gz"
    nib.Nifti1Image(np.ones((6, 6, 6), np.int16), atlas.labels_img.affine).to_filename(three_d)
    short = _write_run(folder, "sub-09", atlas, n=12, seed=9)
    runs |= {
        "sub-07": truncated,
        "sub-08": RestRun("sub-08", "ses-01", 1, three_d, TR, None, False),
        "sub-09": short,
    }
    prepared = prepare_timeseries(
        runs, atlas, SETTINGS, tmp_path / "cache", n_jobs=1, progress=False
    )
    assert prepared.subjects == ["sub-00", "sub-01"]
    reasons = {f.subject: f.reason for f in prepared.failures}
    assert set(reasons) == {"sub-07", "sub-08", "sub-09"}
    assert "truncated" in reasons["sub-07"]
    assert "3-D" in reasons["sub-08"]
    assert "12 volumes" in reasons["sub-09"] and "min_volumes=30" in reasons["sub-09"]
    assert "lower data.masker.min_volumes " in reasons["sub-09"]  # the key that sets it
    assert all(f.path.endswith(".nii.gz") for f in prepared.failures)


def test_a_bad_confounds_table_sidecar_or_field_of_view_skips_only_that_run(
    atlas: Parcellation, tmp_path: Path
) -> None:
    # Each of these stopped the whole preparation with a library's traceback.
    folder = tmp_path / "bids"
    (folder / "dataset_description.json").parent.mkdir(parents=True)
    (folder / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.6.0"}')
    for i in range(7):
        _write_run(folder, f"sub-0{i}", atlas, seed=i)
    confounds = "sub-0{}_ses-01_task-rest_desc-confounds_timeseries.tsv"
    (folder / confounds.format(1)).write_text("trans_x\n" + "0.1\n" * 120)  # a good one
    (folder / confounds.format(2)).write_text("trans_x\n" + "0.1\n" * 80)  # rows != volumes
    (folder / confounds.format(3)).write_text("")  # empty
    far = _write_run(folder, "sub-04", atlas, seed=4).bold
    image: Any = nib.load(far)
    shifted = image.affine.copy()
    shifted[:3, 3] += 500.0  # half a metre away from the atlas
    nib.Nifti1Image(np.asanyarray(image.dataobj), shifted).to_filename(far)
    sidecar = "sub-0{}_ses-01_task-rest_bold.json"
    (folder / sidecar.format(5)).write_text('{"RepetitionTime": "n/a"}')
    (folder / sidecar.format(6)).write_text('[{"RepetitionTime": 2.0}]')
    (folder / "task-rest_bold.json").write_text('{"RepetitionTime": 2.0}')
    runs = pick_runs(index_rest_runs(folder))
    prepared = prepare_timeseries(runs, atlas, SETTINGS, tmp_path / "cache", progress=False)
    assert prepared.subjects == ["sub-00", "sub-01"]
    reasons = {f.subject: f.reason for f in prepared.failures}
    assert set(reasons) == {"sub-02", "sub-03", "sub-04", "sub-05", "sub-06"}
    assert (
        "80 rows for 120 volumes" in reasons["sub-02"] and confounds.format(2) in reasons["sub-02"]
    )
    assert "empty" in reasons["sub-03"] and confounds.format(3) in reasons["sub-03"]
    assert "field of view" in reasons["sub-04"]
    assert sidecar.format(5) in reasons["sub-05"] and "RepetitionTime='n/a'" in reasons["sub-05"]
    assert sidecar.format(6) in reasons["sub-06"] and "a JSON list" in reasons["sub-06"]


@pytest.mark.parametrize(("unit", "spacing"), [("sec", 2.0), ("msec", 2000.0), ("usec", 2e6)])
def test_a_header_repetition_time_is_read_in_its_time_units(
    atlas: Parcellation, tmp_path: Path, unit: str, spacing: float
) -> None:
    # Without a sidecar, a header TR of 2000 msec was used as 2000 s: the 0.01-0.1 Hz band
    # then lay above Nyquist and the series came out wrong.
    run = _write_run(tmp_path, "sub-01", atlas)
    image: Any = nib.load(run.bold)
    header = image.header.copy()
    header.set_xyzt_units("mm", unit)
    header["pixdim"][4] = spacing
    nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine, header).to_filename(run.bold)
    no_sidecar = RestRun("sub-01", "ses-01", 1, run.bold, None, None, False)
    expected = extract_timeseries(run, atlas, SETTINGS)  # TR = 2 s from the sidecar
    assert np.allclose(extract_timeseries(no_sidecar, atlas, SETTINGS), expected, atol=1e-5)


def test_an_unknown_connectivity_kind_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="partial correlation"):
        connectomes([np.zeros((10, 3))], "coherence")
