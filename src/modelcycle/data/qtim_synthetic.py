"""A synthetic resting-state cohort in QTIM's real BIDS layout, for offline runs and tests.

Families are drawn from the real `participants.tsv` (their rows are copied unchanged, `n/a`
included), and each sampled subject gets the rest runs the real subject has in the dataset's
file list (`FILES.txt`): ses-01 only, both sessions, ses-02 only, or none. Every session also
holds a small T1w, so that every participant has a folder as in the real dataset.

Signal: K latent network time courses drive the parcels through subject loadings
`L = backbone·B + genetic·G + twin_environment·C + individual·U`, where B is shared by
everyone, G is identical within a hidden monozygotic pair and half-shared by dizygotic twins
and siblings (√½·family + √½·own), C is shared by twins of one birth, and U is each subject's
own. Parcel series become voxels through the same default parcellation the preparation step
uses, with voxel noise, a slow drift and an intensity baseline, stored as int16 in MNI space.
Zygosity is hidden in `sourcedata/synthetic_kinship.tsv`, never in `participants.tsv`.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from modelcycle.data.parcellations import Parcellation, brain_mask, mni_kmeans
from modelcycle.data.tables import DataError

if TYPE_CHECKING:
    import nibabel as nib

log = logging.getLogger(__name__)

REPETITION_TIME = 2.1  # seconds, as in QTIM's rest sidecars
TRUTH_FILE = "sourcedata/synthetic_kinship.tsv"
#: The spec a cohort was written with, beside it (not BIDS: listed in .bidsignore).
SYNTHETIC_MANIFEST = "modelcycle-synthetic.json"
BIDS_IGNORE = ("**/*defacemask*", SYNTHETIC_MANIFEST)
#: Rest-run patterns of the 1,202 real subjects (from FILES.txt), used when it is absent.
REAL_REST_PATTERNS = {("ses-01",): 893, ("ses-01", "ses-02"): 113, ("ses-02",): 23, (): 173}
REST_RUN = re.compile(r"(sub-[^/]+)/(ses-[^/]+)/func/[^/]*task-rest_bold\.nii(\.gz)?$")
BOLD_SIDECAR = {
    "TaskName": "rest",
    "RepetitionTime": REPETITION_TIME,
    "EchoTime": 0.03,
    "FlipAngle": 90,
    "Manufacturer": "Siemens",
    "ManufacturersModelName": "MedSpec_4T",
    "MagneticFieldStrength": 4,
    "PhaseEncodingDirection": "j-",
    "MRAcquisitionType": "2D",
}
T1W_SIDECAR = {"Manufacturer": "Siemens", "MagneticFieldStrength": 4, "Modality": "MR"}


@dataclass(frozen=True)
class SignalModel:
    """Variance components of the latent-network model (see the module docstring)."""

    n_networks: int = 7
    backbone: float = 1.0
    genetic: float = 0.42
    twin_environment: float = 0.25
    individual: float = 1.0
    parcel_noise: float = 0.8
    voxel_noise: float = 3.0
    drift: float = 2.0
    smoothness: float = 0.6  # AR(1) coefficient of network time courses per volume
    p_monozygotic: float = 0.5  # share of same-sex twin births that are monozygotic


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate: cohort size, image shape and signal."""

    n_families: int = 60
    n_volumes: int = 150
    resolution_mm: int = 8
    n_parcels: int = 32
    seed: int = 0
    signal: SignalModel = field(default_factory=SignalModel)


@dataclass(frozen=True)
class SyntheticCohort:
    """What `write_synthetic_cohort` put on disk."""

    root: Path
    n_subjects: int
    n_families: int
    n_rest_runs: int
    truth: Path


def write_synthetic_cohort(
    dest: Path, qtim_root: Path, spec: SyntheticSpec, progress: bool = False
) -> SyntheticCohort:
    """Write the cohort under `dest`, sampling families from `qtim_root/participants.tsv`."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(spec.seed)
    participants = sample_families(_read_real_participants(qtim_root), spec.n_families, rng)
    patterns = rest_patterns(qtim_root, participants["participant_id"], rng)
    genomes, births = hidden_zygosity(participants, spec.signal.p_monozygotic, rng)
    parcellation = mni_kmeans(spec.n_parcels, spec.resolution_mm)
    loadings = subject_loadings(participants["family_id"], genomes, births, spec, rng)
    dest.mkdir(parents=True, exist_ok=True)
    _write_metadata(dest, participants, qtim_root)
    anat = _t1w_bytes(spec.resolution_mm)
    n_runs = 0
    subjects = tqdm(participants["participant_id"], desc="synthetic subjects", disable=not progress)
    for i, pid in enumerate(subjects):
        sessions = _sessions(participants.iloc[i], patterns[pid])
        for ses in sessions:
            _write_t1w(dest / pid / ses / "anat", f"{pid}_{ses}", anat)
        for ses in patterns[pid]:
            series = parcel_series(loadings[i], spec.n_volumes, spec.signal, rng)
            image = voxel_image(series, parcellation, spec.signal, rng)
            _write_bold(dest / pid / ses / "func", f"{pid}_{ses}", image)
            n_runs += 1
    truth = _write_truth(dest, participants, genomes, births)
    log.info("Wrote %d subjects, %d rest runs to %s", len(participants), n_runs, dest)
    return SyntheticCohort(dest, len(participants), spec.n_families, n_runs, truth)


def _read_real_participants(qtim_root: Path) -> pd.DataFrame:
    path = qtim_root / "participants.tsv"
    if not path.is_file():
        raise DataError(
            f"{path}: not found. The synthetic cohort samples families from QTIM's real "
            "participants.tsv: point data.qtim_root (QTIM_ROOT in the environment; --mirror for "
            "`modelcycle data fetch qtim-synthetic`) at a QTIM copy, or run "
            "`modelcycle data fetch qtim` first."
        )
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    for column in ("participant_id", "family_id", "sex", "age"):
        if column not in table.columns:
            raise DataError(f"{path}: required column {column!r} is missing.")
    return table


def sample_families(
    participants: pd.DataFrame, n_families: int, rng: np.random.Generator
) -> pd.DataFrame:
    """Every row of `n_families` real families drawn without replacement, in id order."""
    families = np.unique(participants["family_id"])
    if not 1 <= n_families <= len(families):
        raise DataError(
            f"data.families={n_families} (--families): give between 1 and {len(families)}, "
            "the families of QTIM's participants.tsv."
        )
    chosen = set(rng.choice(families, size=n_families, replace=False))
    rows = participants[participants["family_id"].isin(chosen)]
    return rows.sort_values("participant_id").reset_index(drop=True)


def rest_patterns(
    qtim_root: Path, subjects: pd.Series, rng: np.random.Generator
) -> dict[str, tuple[str, ...]]:
    """Sessions with a rest run per subject: the real subject's, or drawn from real shares."""
    listing = qtim_root / "FILES.txt"
    if listing.is_file():
        found: dict[str, list[str]] = {}
        for line in listing.read_text().splitlines():
            match = REST_RUN.match(line.strip())
            if match:
                found.setdefault(match[1], []).append(match[2])
        return {pid: tuple(sorted(found.get(pid, []))) for pid in subjects}
    kinds = list(REAL_REST_PATTERNS)
    shares = np.array(list(REAL_REST_PATTERNS.values()), float)
    picks = rng.choice(len(kinds), size=len(subjects), p=shares / shares.sum())
    return {pid: kinds[k] for pid, k in zip(subjects, picks, strict=True)}


def hidden_zygosity(
    participants: pd.DataFrame, p_monozygotic: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A genome id and a birth id per subject.

    A birth groups the members of a family born together (same age at session 1); a
    same-sex birth is monozygotic (one genome) with probability `p_monozygotic`, an
    opposite-sex birth never.
    """
    keys = participants["family_id"] + "|" + participants["age"]
    births = pd.factorize(keys)[0]
    genomes = np.arange(len(participants))
    for b in np.unique(births):
        members = np.flatnonzero(births == b)
        same_sex = participants["sex"].iloc[members].nunique() == 1
        if len(members) > 1 and same_sex and rng.random() < p_monozygotic:
            genomes[members] = members[0]
    return genomes, births


def subject_loadings(
    families: pd.Series,
    genomes: np.ndarray,
    births: np.ndarray,
    spec: SyntheticSpec,
    rng: np.random.Generator,
) -> np.ndarray:
    """Loadings (n_subjects, n_parcels, n_networks) of the latent-network model."""
    m, shape = spec.signal, (spec.n_parcels, spec.signal.n_networks)
    family_ids = pd.factorize(families)[0]
    backbone = rng.normal(size=shape)
    family = rng.normal(size=(family_ids.max() + 1, *shape))
    own_genome = rng.normal(size=(len(genomes), *shape))
    birth = rng.normal(size=(births.max() + 1, *shape))
    own = rng.normal(size=(len(genomes), *shape))
    genetic = np.sqrt(0.5) * family[family_ids] + np.sqrt(0.5) * own_genome[genomes]
    return (
        m.backbone * backbone
        + m.genetic * genetic
        + m.twin_environment * birth[births]
        + m.individual * own
    )


def parcel_series(
    loadings: np.ndarray, n_volumes: int, model: SignalModel, rng: np.random.Generator
) -> np.ndarray:
    """Parcel time series (n_volumes, n_parcels), unit variance per parcel."""
    k = loadings.shape[1]
    shocks = rng.normal(size=(n_volumes + 20, k))
    networks = np.empty_like(shocks)
    networks[0] = shocks[0]
    for t in range(1, len(shocks)):  # AR(1): most power below 0.1 Hz at TR 2.1 s
        networks[t] = model.smoothness * networks[t - 1] + shocks[t]
    networks = networks[20:]  # drop the burn-in
    series = networks @ loadings.T + model.parcel_noise * rng.normal(
        size=(n_volumes, len(loadings))
    )
    return (series - series.mean(0)) / series.std(0)


def voxel_image(
    series: np.ndarray,
    parcellation: Parcellation,
    model: SignalModel,
    rng: np.random.Generator,
) -> nib.Nifti1Image:
    """Parcel series written into their voxels with noise, slow drift and a baseline, int16."""
    import nibabel as nib

    labels = np.asarray(parcellation.labels_img.dataobj).astype(int)
    inside = np.argwhere(labels > 0)
    n_volumes = len(series)
    t = np.linspace(0, 1, n_volumes)
    voxel_signal = series[:, labels[tuple(inside.T)] - 1]  # (T, n_voxels)
    noise = model.voxel_noise * rng.normal(size=voxel_signal.shape)
    slopes, waves = rng.normal(size=(2, len(inside)))
    drift = model.drift * (np.outer(t, slopes) + np.outer(np.cos(np.pi * t), waves))
    baseline = rng.uniform(600, 1000, size=len(inside))
    values = baseline + 10.0 * (voxel_signal + noise + drift)
    data = np.zeros((*labels.shape, n_volumes), dtype=np.int16)
    data[tuple(inside.T)] = np.round(values.T).astype(np.int16)
    image = nib.Nifti1Image(data, parcellation.labels_img.affine)
    image.header.set_xyzt_units("mm", "sec")
    zooms = image.header.get_zooms()
    image.header.set_zooms((*zooms[:3], REPETITION_TIME))
    return image


def slice_timing(n_slices: int) -> list[float]:
    """Interleaved ascending acquisition (even slices first), seconds within one TR."""
    order = [*range(0, n_slices, 2), *range(1, n_slices, 2)]
    times = [0.0] * n_slices
    for i, s in enumerate(order):
        times[s] = round(i * REPETITION_TIME / n_slices, 4)
    return times


def _sessions(row: pd.Series, rest: tuple[str, ...]) -> list[str]:
    has_second = row.get("age_ses02", "n/a") not in ("n/a", "") or "ses-02" in rest
    return ["ses-01", "ses-02"] if has_second else ["ses-01"]


def _write_bold(folder: Path, stem: str, image: nib.Nifti1Image) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{stem}_task-rest_bold"
    image.to_filename(folder / f"{name}.nii.gz")
    sidecar = {**BOLD_SIDECAR, "SliceTiming": slice_timing(image.shape[2])}
    (folder / f"{name}.json").write_text(json.dumps(sidecar, indent=2))


def _t1w_bytes(resolution_mm: int) -> bytes:
    """One gzipped int16 T1w on the grid (the bundled MNI template), reused by every session."""
    import nibabel as nib
    from nilearn.datasets import load_mni152_template

    template = load_mni152_template(resolution=resolution_mm)
    mask = brain_mask(resolution_mm)
    data = np.asarray(template.get_fdata())
    scaled = np.round(1000 * data / max(float(data.max()), 1e-6)).astype(np.int16)
    image = nib.Nifti1Image(scaled, mask.affine)
    image.header.set_xyzt_units("mm")
    raw = io.BytesIO()
    raw.write(image.to_bytes())
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def _write_t1w(folder: Path, stem: str, data: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}_T1w.nii.gz").write_bytes(data)
    (folder / f"{stem}_T1w.json").write_text(json.dumps(T1W_SIDECAR, indent=2))


def _write_metadata(dest: Path, participants: pd.DataFrame, qtim_root: Path) -> None:
    participants.to_csv(dest / "participants.tsv", sep="\t", index=False)
    real_json = qtim_root / "participants.json"
    if real_json.is_file():
        (dest / "participants.json").write_text(real_json.read_text())
    description = {
        "Name": "QTIM-shaped synthetic resting-state cohort",
        "BIDSVersion": "1.6.0",
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["modelcycle"],
        "GeneratedBy": [{"Name": "modelcycle", "Description": "latent-network model"}],
        "SourceDatasets": [{"URL": "https://openneuro.org/datasets/ds004169"}],
    }
    (dest / "dataset_description.json").write_text(json.dumps(description, indent=2))
    (dest / "README").write_text(
        "Synthetic resting-state fMRI in the layout of QTIM (OpenNeuro ds004169), written by "
        "`modelcycle data fetch qtim-synthetic`. Families and ages are QTIM's; images are "
        "simulated. Hidden zygosity: sourcedata/synthetic_kinship.tsv.\n"
    )
    (dest / ".bidsignore").write_text("\n".join(BIDS_IGNORE) + "\n")
    (dest / "CHANGES").write_text("1.0.0 synthetic\n  - Generated by modelcycle.\n")


def _write_truth(
    dest: Path, participants: pd.DataFrame, genomes: np.ndarray, births: np.ndarray
) -> Path:
    """Every related pair with its hidden relation: MZ, DZ (same birth) or sibling."""
    rows = []
    ids, families = participants["participant_id"].to_numpy(), participants["family_id"].to_numpy()
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            if families[i] != families[j]:
                continue
            relation = (
                "MZ" if genomes[i] == genomes[j] else "DZ" if births[i] == births[j] else "sibling"
            )
            rows.append((ids[i], ids[j], relation))
    path = dest / TRUTH_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows, columns=["participant_a", "participant_b", "relation"])
    table.to_csv(path, sep="\t", index=False)
    return path
