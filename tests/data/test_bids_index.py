"""The small BIDS index: rest runs per subject, one picked by the documented rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelcycle.data.bids_index import entities, index_rest_runs, pick_runs
from modelcycle.data.tables import DataError


def _touch(root: Path, rel: str, text: str = "") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def bids(tmp_path: Path) -> Path:
    root = tmp_path / "bids"
    _touch(root, "dataset_description.json", '{"Name": "x", "BIDSVersion": "1.6.0"}')
    _touch(root, "task-rest_bold.json", json.dumps({"RepetitionTime": 2.5}))
    for rel in (
        "sub-01/ses-01/func/sub-01_ses-01_task-rest_bold.nii.gz",
        "sub-01/ses-02/func/sub-01_ses-02_task-rest_bold.nii.gz",
        "sub-02/ses-02/func/sub-02_ses-02_task-rest_bold.nii.gz",  # rest only in ses-02
        "sub-03/ses-01/func/sub-03_ses-01_task-nback_bold.nii.gz",  # no rest run
        "sub-04/ses-01/func/sub-04_ses-01_task-rest_run-2_bold.nii.gz",
        "sub-04/ses-01/func/sub-04_ses-01_task-rest_run-1_bold.nii.gz",
        "derivatives/fmriprep/sub-05/ses-01/func/"
        "sub-05_ses-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz",
        "sub-05/ses-01/func/sub-05_ses-01_task-rest_bold.nii.gz",
    ):
        _touch(root, rel)
    _touch(
        root,
        "sub-01/ses-01/func/sub-01_ses-01_task-rest_bold.json",
        json.dumps({"RepetitionTime": 2.1}),
    )
    _touch(
        root,
        "derivatives/fmriprep/sub-05/ses-01/func/sub-05_ses-01_task-rest_desc-confounds_timeseries.tsv",
        "trans_x\n0\n",
    )
    return root


def test_entities_are_read_from_the_name() -> None:
    name = "sub-0001_ses-02_task-rest_run-3_bold.nii.gz"
    assert entities(name) == {"sub": "0001", "ses": "02", "task": "rest", "run": "3"}


def test_the_index_finds_rest_runs_only_across_sessions(bids: Path) -> None:
    runs = index_rest_runs(bids)
    assert sorted(runs) == ["sub-01", "sub-02", "sub-04", "sub-05"]
    assert [r.session for r in runs["sub-01"]] == ["ses-01", "ses-02"]


def test_one_run_per_subject_by_the_documented_rule(bids: Path) -> None:
    picked = pick_runs(index_rest_runs(bids))
    assert picked["sub-01"].session == "ses-01"  # earliest session
    assert picked["sub-02"].session == "ses-02"  # rest only in ses-02: kept
    assert picked["sub-04"].run == 1  # lowest run
    assert picked["sub-05"].preprocessed  # the MNI-space derivative over raw
    assert picked["sub-05"].confounds is not None and picked["sub-05"].confounds.is_file()
    assert picked["sub-01"].confounds is None


def test_repetition_time_comes_from_the_sidecar_else_the_dataset_level_file(bids: Path) -> None:
    picked = pick_runs(index_rest_runs(bids))
    assert picked["sub-01"].repetition_time == 2.1
    assert picked["sub-02"].repetition_time == 2.5  # inherited


def test_a_folder_that_is_not_bids_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="qtim-synthetic"):
        index_rest_runs(tmp_path)
