"""The synthetic QTIM-shaped rest-fMRI cohort: layout, metadata, hidden truth, signal."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from modelcycle.data import qtim_synthetic as qs
from modelcycle.data.qtim_functional import ensure_synthetic
from modelcycle.data.tables import DataError

TINY = qs.SyntheticSpec(n_families=6, n_volumes=24, seed=3)
BIDS_VALIDATOR = "1.15.0"  # the last npm release of the Node validator; runs on Node >= 18


@pytest.fixture(scope="module")
def cohort(real_qtim: Path, tmp_path_factory: pytest.TempPathFactory) -> qs.SyntheticCohort:
    return qs.write_synthetic_cohort(tmp_path_factory.mktemp("syn") / "bids", real_qtim, TINY)


def _relative_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_every_subject_file_follows_a_pattern_of_the_real_file_list(
    cohort: qs.SyntheticCohort, real_qtim: Path
) -> None:
    def shape(rel: str) -> str:  # the name with subject and session numbers masked
        return re.sub(r"ses-\d+", "ses-NN", re.sub(r"sub-\d+", "sub-NNNN", rel))

    real = {shape(line) for line in (real_qtim / "FILES.txt").read_text().splitlines()}
    ours = [rel for rel in _relative_files(cohort.root) if rel.startswith("sub-")]
    assert ours and {shape(rel) for rel in ours} <= real
    top = {rel for rel in _relative_files(cohort.root) if "/" not in rel}
    assert {"participants.tsv", "dataset_description.json", "README", "CHANGES"} <= top


def test_rest_runs_are_the_real_subjects_and_only_in_their_sessions(
    cohort: qs.SyntheticCohort, real_qtim: Path
) -> None:
    listing = (real_qtim / "FILES.txt").read_text().splitlines()
    real_rest = {line for line in listing if line.endswith("task-rest_bold.nii.gz")}
    ours = {rel for rel in _relative_files(cohort.root) if rel.endswith("task-rest_bold.nii.gz")}
    ids = pd.read_csv(cohort.root / "participants.tsv", sep="\t")["participant_id"]
    expected = {rel for rel in real_rest if rel.split("/")[0] in set(ids)}
    assert ours == expected and cohort.n_rest_runs == len(ours)


def test_participants_rows_are_real_rows_unchanged_and_hide_zygosity(
    cohort: qs.SyntheticCohort, real_qtim: Path
) -> None:
    ours = pd.read_csv(cohort.root / "participants.tsv", sep="\t", dtype=str, keep_default_na=False)
    real = pd.read_csv(real_qtim / "participants.tsv", sep="\t", dtype=str, keep_default_na=False)
    merged = ours.merge(real, how="left", indicator=True)
    assert (merged["_merge"] == "both").all()
    assert list(ours.columns) == list(real.columns)
    assert (ours == "n/a").any().any()
    assert ours["family_id"].nunique() == TINY.n_families
    assert not any("zyg" in c.lower() or c == "relation" for c in ours.columns)
    truth = pd.read_csv(cohort.truth, sep="\t")
    assert set(truth["relation"]) <= {"MZ", "DZ", "sibling"}
    assert cohort.truth.is_relative_to(cohort.root / "sourcedata")


def test_bold_images_are_int16_mni_4d_with_the_sidecar_repetition_time(
    cohort: qs.SyntheticCohort,
) -> None:
    bold = sorted(cohort.root.rglob("*task-rest_bold.nii.gz"))[0]
    image = nib.load(bold)
    assert isinstance(image, nib.Nifti1Image)
    assert image.get_data_dtype() == np.int16
    assert image.shape[3] == TINY.n_volumes
    assert image.header.get_zooms() == pytest.approx((8, 8, 8, qs.REPETITION_TIME))
    assert np.allclose(image.affine[:3, 3], [-98, -134, -72])  # nilearn's MNI152 grid
    sidecar = json.loads(bold.with_name(bold.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["RepetitionTime"] == qs.REPETITION_TIME and sidecar["TaskName"] == "rest"
    assert len(sidecar["SliceTiming"]) == image.shape[2]
    assert min(sidecar["SliceTiming"]) >= 0 and max(sidecar["SliceTiming"]) < qs.REPETITION_TIME


def test_a_default_size_run_stays_under_three_megabytes(real_qtim: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    spec = qs.SyntheticSpec()
    loadings = rng.normal(size=(spec.n_parcels, spec.signal.n_networks))
    series = qs.parcel_series(loadings, spec.n_volumes, spec.signal, rng)
    image = qs.voxel_image(
        series, qs.mni_kmeans(spec.n_parcels, spec.resolution_mm), spec.signal, rng
    )
    image.to_filename(tmp_path / "run.nii.gz")
    assert (tmp_path / "run.nii.gz").stat().st_size < 3 * 2**20


def test_opposite_sex_births_are_never_monozygotic_and_same_sex_ones_can_be() -> None:
    participants = pd.DataFrame(
        {
            "family_id": ["f1", "f1", "f2", "f2", "f2"],
            "age": ["20", "20", "25", "25", "30"],
            "sex": ["M", "F", "F", "F", "F"],
        }
    )
    genomes, births = qs.hidden_zygosity(participants, 1.0, np.random.default_rng(0))
    assert genomes[0] != genomes[1]  # opposite-sex twins
    assert genomes[2] == genomes[3] and genomes[4] != genomes[2]  # MZ pair, older sibling
    assert births[2] == births[3] != births[4]


def test_relatives_share_more_connectivity_in_the_order_mz_dz_sibling_unrelated() -> None:
    # The calibration target, at the level of the latent model (no voxels), on many pairs.
    spec = qs.SyntheticSpec(n_volumes=150)
    rng = np.random.default_rng(1)
    families = pd.Series(["a", "a", "b", "b", "c", "c"] * 40)
    families = families + (np.arange(240) // 6).astype(str)
    genomes = np.arange(240)
    genomes[0::6] = genomes[1::6] = np.arange(0, 240, 6)  # MZ pairs
    births = np.arange(240)
    births[1::6] = births[0::6]  # MZ twins: one birth
    births[3::6] = births[2::6]  # DZ twins: one birth, two genomes; 4 and 5 are siblings
    loadings = qs.subject_loadings(families, genomes, births, spec, rng)
    iu = np.triu_indices(spec.n_parcels, 1)
    edges = np.array(
        [np.corrcoef(qs.parcel_series(L, spec.n_volumes, spec.signal, rng).T)[iu] for L in loadings]
    )
    S = np.corrcoef((edges - edges.mean(0)) / edges.std(0))
    mz, dz, sib = (
        np.mean([S[i, i + d] for i in range(o, 240, 6)]) for o, d in ((0, 1), (2, 1), (4, 1))
    )
    unrelated = np.mean([S[i, i + 6] for i in range(0, 234, 6)])
    assert mz > dz > sib > unrelated


def test_a_missing_participants_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"participants\.tsv.*data fetch qtim"):
        qs.write_synthetic_cohort(tmp_path / "out", tmp_path, TINY)


def _bids_validator() -> Path:
    """Install the npm `bids-validator` once into a cache folder; its executable."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm not found: install Node.js (apt-get install -y nodejs npm)")
    cache = Path(
        os.environ.get("MODELCYCLE_TEST_CACHE", Path.home() / ".cache" / "modelcycle-tests")
    )
    prefix = cache / f"bids-validator-{BIDS_VALIDATOR}"
    exe = prefix / "node_modules" / ".bin" / "bids-validator"
    if not exe.is_file():
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix),
             f"bids-validator@{BIDS_VALIDATOR}"],
            check=True, capture_output=True, timeout=600,
        )  # fmt: skip
    return exe


@pytest.mark.slow
def test_the_official_bids_validator_finds_no_error(real_qtim: Path, tmp_path: Path) -> None:
    exe = _bids_validator()
    root = ensure_synthetic(tmp_path / "bids", real_qtim, TINY)  # with our manifest beside it
    assert (root / qs.SYNTHETIC_MANIFEST).is_file()
    done = subprocess.run(
        [str(exe), str(root), "--json"], capture_output=True, text=True, timeout=300
    )
    report = json.loads(done.stdout)
    errors = [(i["key"], i["reason"]) for i in report["issues"]["errors"]]
    assert errors == []
    assert report["summary"]["tasks"] == ["rest"]
    participants = pd.read_csv(root / "participants.tsv", sep="\t")
    assert len(report["summary"]["subjects"]) == len(participants)


def test_a_cohort_made_with_other_settings_names_the_keys_and_the_override(
    tmp_path: Path,
) -> None:
    # The message printed both settings dicts whole, signal model included.
    made = qs.SyntheticSpec(n_families=12, n_volumes=80)
    (tmp_path / qs.SYNTHETIC_MANIFEST).write_text(json.dumps(dataclasses.asdict(made)))
    with pytest.raises(DataError) as caught:
        ensure_synthetic(tmp_path, None, qs.SyntheticSpec())
    said = str(caught.value)
    assert "data.families=12 (the config: 60)" in said and "data.n_volumes=80" in said
    assert "give `data.families=12 data.n_volumes=80`" in said and "data.synthetic_dir" in said
    assert "signal" not in said and "seed" not in said and "\n" not in said
