"""QTIM (OpenNeuro ds004169): participants and FreeSurfer 5.3 measures of session 1.

Rules applied when building the cohort (each exclusion is counted and logged):

* FreeSurfer rows whose subject is not in `participants.tsv` are excluded.
* Participants without a FreeSurfer row are not part of the cohort.
* A measure missing for more than `max_missing_measure` of subjects is dropped (in the real
  table: `AvgThickness`, `TSurfArea`), as is a measure constant over the cohort.
* A subject missing more than `max_missing_subject` of the remaining measures is excluded
  (in the real table: 59 subjects, 58 of them without any cortical measure); other gaps
  stay NaN and are imputed per fold with medians of the training part.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelcycle.data.openneuro import FetchRecord, copy_mirror, fetch_openneuro, read_manifest
from modelcycle.data.tables import DataError, read_bids_tsv
from modelcycle.kinds import is_number

log = logging.getLogger(__name__)

DATASET_ID = "ds004169"
PARTICIPANTS = "participants.tsv"
FREESURFER_SES01 = "derivatives/freesurfer_5.3/fs5.3_ses-01.tsv"
#: What the structural task needs from OpenNeuro (about 2 MB).
STRUCTURAL_FILES = (
    "participants.tsv",
    "participants.json",
    "dataset_description.json",
    "derivatives/freesurfer_5.3/*",
)
PARTICIPANT_COLUMNS = ("participant_id", "family_id", "sex", "age", "ses01_T1w_acq")
SEX_CODES = {"M": 1.0, "F": 0.0}
ACQUISITION_CODES = {1: "coronal", 2: "sagittal"}


@dataclass(frozen=True)
class Cohort:
    """Subjects with family, covariates and measures, rows aligned.

    Attributes:
        subjects: Index `participant_id`; columns `family_id`, `sex` (M/F), `age`,
            `acquisition` (1 coronal, 2 sagittal).
        measures: Index `participant_id`; one float column per FreeSurfer measure (NaN kept).
        exclusions: Reason → excluded participant ids (or dropped measure names).
        data_hash: sha256 over the files read.
    """

    subjects: pd.DataFrame
    measures: pd.DataFrame
    exclusions: dict[str, list[str]] = field(default_factory=dict)
    data_hash: str = ""

    def __len__(self) -> int:
        return len(self.subjects)

    def covariates(self) -> np.ndarray:
        """Age, sex (M=1) and acquisition orientation (sagittal=1), shape (n, 3)."""
        s = self.subjects
        return np.column_stack(
            [s["age"].to_numpy(float), s["sex"].map(SEX_CODES), s["acquisition"].eq(2)]
        ).astype(float)


@dataclass
class QTIMSource:
    """Where QTIM comes from: a local BIDS copy (`root`) or an OpenNeuro download.

    Args:
        root: A local copy of ds004169 (at least participants.tsv and the FreeSurfer tables).
        download_dir: Where to download to when `root` is not given.
        max_missing_measure: Drop a measure missing in more than this share of subjects.
        max_missing_subject: Exclude a subject missing more than this share of measures.
    """

    root: Path | None = None
    download_dir: Path = Path(".modelcycle/data/qtim")
    max_missing_measure: float = 0.5
    max_missing_subject: float = 0.2

    @staticmethod
    def CHECK(values: dict[str, Any]) -> None:  # noqa: N802 - the name config checks look up
        """Refuse a missing-share setting outside 0 to 1, before anything is read."""
        for key in ("max_missing_measure", "max_missing_subject"):
            value = values.get(key)
            if value is not None and not (is_number(value) and 0 <= value <= 1):
                raise ValueError(f"{key}={value!r}: give a share from 0 to 1.")

    def resolve_root(self) -> Path:
        """The local root, downloading the structural files first when there is none."""
        if self.root is not None:
            root = Path(self.root).expanduser()
            if not root.is_dir():
                raise DataError(
                    f"data.root={root} is not a directory. Point it at a copy of {DATASET_ID}, "
                    "or leave it empty to download the files from OpenNeuro."
                )
            return root
        return fetch_structural(Path(self.download_dir)).root

    def load(self) -> Cohort:
        """Read, validate and join participants and FreeSurfer ses-01 measures."""
        root = self.resolve_root()
        participants = read_participants(root / PARTICIPANTS)
        measures = read_bids_tsv(root / FREESURFER_SES01, ["participant_id"], "participant_id")
        cohort = build_cohort(
            participants,
            measures.set_index("participant_id"),
            self.max_missing_measure,
            self.max_missing_subject,
            source=root / FREESURFER_SES01,
        )
        digest = _hash_files([root / PARTICIPANTS, root / FREESURFER_SES01])
        return Cohort(cohort.subjects, cohort.measures, cohort.exclusions, digest)


def fetch_structural(target: Path, mirror: Path | None = None) -> FetchRecord:
    """Download QTIM metadata and FreeSurfer tables once; later calls reuse the manifest.

    With `mirror`, the same files are copied from that local copy instead of downloaded.
    """
    if mirror is not None:
        return copy_mirror(DATASET_ID, mirror, target, STRUCTURAL_FILES)
    record = read_manifest(target)
    if record is not None and (target / FREESURFER_SES01).is_file():
        log.info("Using QTIM downloaded to %s (digest %s)", target, record.digest()[:12])
        return record
    log.info("Downloading QTIM %s structural files into %s", DATASET_ID, target)
    return fetch_openneuro(DATASET_ID, target, STRUCTURAL_FILES)


def read_participants(path: Path) -> pd.DataFrame:
    """Read `participants.tsv` and check the columns the twins task relies on.

    Raises:
        DataError: A required column is absent or holds values outside its levels.
    """
    table = read_bids_tsv(path, PARTICIPANT_COLUMNS, "participant_id")
    _check_values(table, "sex", table["sex"].isin(list(SEX_CODES)), path, "M or F")
    age = pd.to_numeric(table["age"], errors="coerce")
    _check_values(table, "age", age.notna() & (age > 0), path, "a positive number of years")
    acq = pd.to_numeric(table["ses01_T1w_acq"], errors="coerce")
    _check_values(table, "ses01_T1w_acq", acq.isin(list(ACQUISITION_CODES)), path, "1 or 2")
    _check_values(table, "family_id", table["family_id"].notna(), path, "a family identifier")
    return pd.DataFrame(
        {
            "family_id": table["family_id"].astype(str).to_numpy(),
            "sex": table["sex"].to_numpy(),
            "age": age.to_numpy(float),
            "acquisition": acq.astype(int).to_numpy(),
        },
        index=pd.Index(table["participant_id"].astype(str), name="participant_id"),
    )


def _check_values(table: pd.DataFrame, column: str, ok: pd.Series, path: Path, want: str) -> None:
    if bool(ok.all()):
        return
    bad = table.loc[~ok, ["participant_id", column]].head(5)
    shown = ", ".join(f"{pid}={value!r}" for pid, value in bad.itertuples(index=False))
    raise DataError(
        f"{path}: column {column!r} must be {want}; {int((~ok).sum())} row(s) are not "
        f"(first: {shown}). Fix those rows or remove the participants."
    )


def build_cohort(
    participants: pd.DataFrame,
    measures: pd.DataFrame,
    max_missing_measure: float,
    max_missing_subject: float,
    source: Path,
) -> Cohort:
    """Join participants and measures, applying the module's documented exclusion rules."""
    exclusions: dict[str, list[str]] = {}
    numeric = measures.apply(pd.to_numeric, errors="coerce")
    text_cells = numeric.isna() & measures.notna()
    if text_cells.any().any():
        column = str(text_cells.any().idxmax())
        raise DataError(
            f"{source}: column {column!r} holds non-numeric values "
            f"(e.g. {measures.loc[text_cells[column], column].iloc[0]!r}); use numbers or n/a."
        )
    unknown = numeric.index.difference(participants.index)
    _exclude(exclusions, "FreeSurfer row without a participants.tsv entry", unknown)
    numeric = numeric.drop(index=unknown)
    _exclude(
        exclusions,
        "no FreeSurfer ses-01 measures",
        participants.index.difference(numeric.index),
    )
    if numeric.empty:
        raise DataError(f"{source}: no row matches a participant of participants.tsv.")
    sparse = numeric.columns[numeric.isna().mean() > max_missing_measure]
    _exclude(exclusions, f"measure missing in >{max_missing_measure:.0%} of subjects", sparse)
    numeric = numeric.drop(columns=sparse)
    constant = numeric.columns[numeric.std() == 0]
    _exclude(exclusions, "measure constant over the cohort", constant)
    numeric = numeric.drop(columns=constant)
    gappy = numeric.index[numeric.isna().mean(axis=1) > max_missing_subject]
    _exclude(exclusions, f"subject missing >{max_missing_subject:.0%} of measures", gappy)
    numeric = numeric.drop(index=gappy)
    if numeric.empty or numeric.shape[1] == 0:
        counts = "; ".join(f"{reason}: {len(names)}" for reason, names in exclusions.items())
        raise DataError(
            f"{source}: nothing is left after the exclusions ({counts}); check "
            "data.max_missing_measure and data.max_missing_subject."
        )
    subjects = participants.loc[numeric.index]
    return Cohort(subjects=subjects, measures=numeric.astype(float), exclusions=exclusions)


def _exclude(exclusions: dict[str, list[str]], reason: str, names: pd.Index) -> None:
    if len(names):
        exclusions[reason] = [str(n) for n in names]
        log.debug("Excluded %d: %s", len(names), reason)


def _hash_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
