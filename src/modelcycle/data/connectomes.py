"""Rest runs → parcel time series (cached, parallel, failures reported) → connectomes.

Each run's parcel series is cached under a content address: sha256 of the BOLD file, its
confounds, the repetition time, the masker settings and the parcellation. A rerun loads
every series from the cache; changing any of those recomputes exactly the runs affected.
A run that cannot be used (unreadable or truncated NIfTI, 3-D image, too few volumes, a
confounds table that is empty or of another length, a sidecar without a usable
RepetitionTime, a field of view missing the atlas) is skipped and reported by subject, file
and reason; the others proceed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelcycle.data.bids_index import RestRun
from modelcycle.data.cache import save_array
from modelcycle.data.parcellations import Parcellation
from modelcycle.digests import sha256_file
from modelcycle.messages import clause

log = logging.getLogger(__name__)

CONNECTIVITY_KINDS = ("correlation", "partial correlation", "tangent")
DEFAULT_CONFOUNDS = (
    "trans_x",
    "trans_y",
    "trans_z",
    "rot_x",
    "rot_y",
    "rot_z",
    "csf",
    "white_matter",
)


class RunError(ValueError):
    """A run that cannot be turned into parcel time series; the message says why."""


@dataclass(frozen=True)
class MaskerSettings:
    """Signal cleaning applied by nilearn's labels masker, and the run's minimum length."""

    detrend: bool = True
    standardize: bool = True
    low_pass: float | None = 0.1
    high_pass: float | None = 0.01
    min_volumes: int = 50
    confounds: tuple[str, ...] = DEFAULT_CONFOUNDS


@dataclass(frozen=True)
class Failure:
    """A run skipped during preparation."""

    subject: str
    path: str
    reason: str


@dataclass
class Prepared:
    """Parcel time series per subject, and what happened on the way."""

    subjects: list[str]
    timeseries: list[np.ndarray]  # each (n_volumes, n_parcels), float32
    keys: list[str]
    failures: list[Failure] = field(default_factory=list)
    cached: int = 0
    computed: int = 0

    def digest(self) -> str:
        """One hash of every subject's cache key: identifies the prepared data."""
        lines = "\n".join(f"{s}:{k}" for s, k in zip(self.subjects, self.keys, strict=True))
        return hashlib.sha256(lines.encode()).hexdigest()


def cache_key(run: RestRun, parcellation_digest: str, settings: MaskerSettings) -> str:
    """Content address of one run's series: input bytes + every parameter that shapes them."""
    parts = {
        "bold": sha256_file(run.bold),
        "confounds": sha256_file(run.confounds) if run.confounds else None,
        "repetition_time": run.repetition_time,
        "settings": asdict(settings),
        "parcellation": parcellation_digest,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def extract_timeseries(
    run: RestRun, parcellation: Parcellation, settings: MaskerSettings
) -> np.ndarray:
    """Parcel-mean series (n_volumes, n_parcels), cleaned as `settings` say.

    Raises:
        RunError: The file is unreadable or truncated, not 4-D, too short, has no usable
            repetition time or confounds table, or does not overlap every parcel.
    """
    import nibabel as nib
    from nilearn.image.resampling import BoundingBoxError
    from nilearn.maskers import NiftiLabelsMasker

    if run.problem:
        raise RunError(run.problem)
    image = _load_4d(run.bold, settings.min_volumes)
    tr = run.repetition_time or _header_tr(image)
    if not tr or tr <= 0:
        raise RunError("no RepetitionTime in the sidecar or the header; add it to the sidecar")
    masker = NiftiLabelsMasker(
        labels_img=parcellation.labels_img,
        detrend=settings.detrend,
        standardize="zscore_sample" if settings.standardize else False,
        low_pass=settings.low_pass,
        high_pass=settings.high_pass,
        t_r=tr,
        resampling_target="data",
        keep_masked_labels=False,
    )
    assert isinstance(image, nib.Nifti1Image)
    confounds = _confounds(run, settings, image.shape[3])
    try:
        series = masker.fit_transform(image, confounds=confounds)
    except BoundingBoxError as err:
        raise RunError(
            f"its field of view does not overlap the {parcellation.name} atlas ({err}); "
            "the image is not in the atlas's (MNI) space"
        ) from err
    if series.shape[1] != parcellation.n_parcels:
        raise RunError(
            f"covers {series.shape[1]} of the {parcellation.n_parcels} parcels of "
            f"{parcellation.name}; the image is not in the atlas's (MNI) space"
        )
    return np.asarray(series, dtype=np.float32)


#: Seconds per unit of the NIfTI header's time axis (xyzt_units); unset is read as seconds.
TIME_UNITS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6, "unknown": 1.0}


def _header_tr(image: Any) -> float:
    """The header's volume spacing in seconds, converted from its time units."""
    spacing = float(image.header.get_zooms()[3])
    unit = image.header.get_xyzt_units()[1]
    return spacing * TIME_UNITS.get(unit, 1.0)


def _load_4d(path: Path, min_volumes: int) -> Any:
    import nibabel as nib

    try:
        image: Any = nib.load(path)
        data = np.asanyarray(image.dataobj)  # reads every byte: a truncated file fails here
    except Exception as err:  # nibabel raises many types for a damaged file
        raise RunError(f"unreadable or truncated NIfTI ({type(err).__name__}: {err})") from err
    if data.ndim != 4:
        raise RunError(f"a {data.ndim}-D image of shape {data.shape}; a BOLD run must be 4-D")
    if data.shape[3] < min_volumes:
        raise RunError(
            f"{data.shape[3]} volumes, fewer than min_volumes={min_volumes}; "
            "lower data.masker.min_volumes only if such short runs are intended"
        )
    return nib.Nifti1Image(data, image.affine, image.header)


def _confounds(run: RestRun, settings: MaskerSettings, n_volumes: int) -> np.ndarray | None:
    if run.confounds is None or not settings.confounds:
        return None
    import pandas as pd

    try:
        table = pd.read_csv(run.confounds, sep="\t", na_values=["n/a"])
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise RunError(
            f"its confounds table {run.confounds} is empty or not a TSV ({clause(err)}); "
            "fix or remove it"
        ) from err
    columns = [c for c in settings.confounds if c in table.columns]
    if not columns:
        return None
    if len(table) != n_volumes:
        raise RunError(
            f"its confounds table {run.confounds} has {len(table)} rows for {n_volumes} "
            "volumes; it must hold one row per volume of the run"
        )
    # Derivative-type confounds start with n/a; zero is the usual fill.
    return table[columns].fillna(0.0).to_numpy(float)


def _extract_one(
    subject: str, run: RestRun, parcellation: Parcellation, settings: MaskerSettings
) -> tuple[str, np.ndarray | Failure]:
    try:
        return subject, extract_timeseries(run, parcellation, settings)
    except RunError as err:
        return subject, Failure(subject, str(run.bold), str(err))


def prepare_timeseries(
    runs: dict[str, RestRun],
    parcellation: Parcellation,
    settings: MaskerSettings,
    cache_dir: Path,
    n_jobs: int = 1,
    progress: bool = True,
) -> Prepared:
    """Parcel series of every subject's run: from the cache, else computed in parallel.

    Args:
        runs: One run per subject (`bids_index.pick_runs`).
        parcellation: The atlas whose parcels become graph nodes.
        settings: Masker settings.
        cache_dir: Where the per-run series are stored by content address.
        n_jobs: Worker processes for the runs not in the cache (-1: every core).
        progress: Show a progress bar.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    atlas = parcellation.digest()
    keys = {s: cache_key(r, atlas, settings) for s, r in runs.items()}
    found: dict[str, np.ndarray] = {}
    for subject, key in keys.items():
        if (cache_dir / f"{key}.npy").is_file():
            found[subject] = np.load(cache_dir / f"{key}.npy")
    todo = [s for s in runs if s not in found]
    failures = []
    for subject, result in _run_parallel(todo, runs, parcellation, settings, n_jobs, progress):
        if isinstance(result, Failure):
            failures.append(result)
            log.warning("Skipped %s (%s): %s", subject, result.path, result.reason)
            continue
        save_array(cache_dir / f"{keys[subject]}.npy", result)
        found[subject] = result
    subjects = sorted(found)
    log.info(
        "Parcel series: %d from cache, %d computed, %d skipped",
        len(runs) - len(todo),
        len(todo) - len(failures),
        len(failures),
    )
    return Prepared(
        subjects,
        [found[s] for s in subjects],
        [keys[s] for s in subjects],
        sorted(failures, key=lambda f: f.subject),
        cached=len(runs) - len(todo),
        computed=len(todo) - len(failures),
    )


def _run_parallel(
    todo: list[str],
    runs: dict[str, RestRun],
    parcellation: Parcellation,
    settings: MaskerSettings,
    n_jobs: int,
    progress: bool,
) -> Iterator[tuple[str, np.ndarray | Failure]]:
    if not todo:
        return iter(())
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    jobs = (delayed(_extract_one)(s, runs[s], parcellation, settings) for s in todo)
    parallel = Parallel(n_jobs=n_jobs, return_as="generator_unordered")
    results = parallel(jobs)
    return iter(tqdm(results, total=len(todo), desc="parcel series", disable=not progress))


def connectomes(timeseries: list[np.ndarray], kind: str = "correlation") -> np.ndarray:
    """Connectivity matrices (n_subjects, n_parcels, n_parcels), Ledoit-Wolf covariance.

    `tangent` is fitted on the series given (a group reference, no labels involved).
    """
    from nilearn.connectome import ConnectivityMeasure
    from sklearn.covariance import LedoitWolf

    if kind not in CONNECTIVITY_KINDS:
        raise ValueError(f"connectivity kind {kind!r} is not one of {list(CONNECTIVITY_KINDS)}.")
    measure = ConnectivityMeasure(
        cov_estimator=LedoitWolf(store_precision=False), kind=kind, standardize=False
    )
    matrices: np.ndarray = measure.fit_transform(timeseries)
    return matrices
