"""QTIM resting-state fMRI as a cohort of connectomes: download, synthesize, prepare, load.

Where the BOLD runs come from: `root` (a local BIDS copy: QTIM's raw runs, or fMRIPrep
outputs in MNI space, which an MNI atlas requires), or, when `root` is empty, the synthetic
QTIM-shaped cohort in `synthetic_dir`, written on first use. Either way the rest runs are
indexed (`bids_index`), one per subject is picked, parcel series are extracted with a
content-addressed cache (`connectomes`) and each subject's connectome becomes a row of
upper-triangle edges, so the twins machinery (pairs, splits, baseline) applies unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from modelcycle.data.atomic import replacing
from modelcycle.data.bids_index import RestRun, index_rest_runs, pick_runs
from modelcycle.data.connectomes import (
    CONNECTIVITY_KINDS,
    MaskerSettings,
    Prepared,
    connectomes,
    prepare_timeseries,
)
from modelcycle.data.openneuro import FetchError, FetchRecord, copy_mirror, fetch_openneuro
from modelcycle.data.parcellations import (
    ATLASES,
    HARVARD_OXFORD_REGIONS,
    SCHAEFER_SIZES,
    Parcellation,
    load_parcellation,
)
from modelcycle.data.qtim import DATASET_ID, Cohort, fetch_structural, read_participants
from modelcycle.data.qtim_synthetic import (
    SYNTHETIC_MANIFEST,
    TRUTH_FILE,
    SyntheticSpec,
    write_synthetic_cohort,
)
from modelcycle.data.tables import DataError
from modelcycle.kinds import Range, describe_range, in_range, is_number, is_whole

log = logging.getLogger(__name__)

#: The resting-state runs and metadata of ds004169 (about 29 GB).
FUNCTIONAL_FILES = (
    "participants.tsv",
    "participants.json",
    "dataset_description.json",
    "sub-*/ses-*/func/*task-rest_bold.nii.gz",
    "sub-*/ses-*/func/*task-rest_bold.json",
)


def fetch_functional(target: Path, mirror: Path | None = None) -> FetchRecord:
    """Download QTIM's rest runs with openneuro-py (resumable: present files are skipped).

    With `mirror`, the same files are copied from that local copy instead of downloaded.
    """
    if mirror is not None:
        return copy_mirror(DATASET_ID, mirror, target, FUNCTIONAL_FILES)
    log.info("Downloading the resting-state runs of %s (about 29 GB) into %s", DATASET_ID, target)
    return fetch_openneuro(DATASET_ID, target, FUNCTIONAL_FILES)


def ensure_synthetic(
    dest: Path, qtim_root: Path | None, spec: SyntheticSpec, progress: bool = False
) -> Path:
    """The synthetic cohort in `dest`, written once; a different spec there is an error."""
    manifest = dest / SYNTHETIC_MANIFEST
    wanted = json.loads(json.dumps(asdict(spec)))
    if manifest.is_file():
        found = json.loads(manifest.read_text())
        if found != wanted:
            raise DataError(_mismatch(dest, found, wanted))
        return dest
    source = Path(qtim_root) if qtim_root else _real_metadata(dest.parent / "qtim")
    write_synthetic_cohort(dest, source, spec, progress)
    manifest.write_text(json.dumps(wanted, indent=2))
    return dest


#: The data config key that sets each field of the synthetic spec.
SPEC_KEYS = {
    "n_families": "data.families",
    "n_volumes": "data.n_volumes",
    "resolution_mm": "data.resolution_mm",
    "seed": "data.seed",
}


def _mismatch(dest: Path, found: dict[str, Any], wanted: dict[str, Any]) -> str:
    """Which settings made the cohort in `dest` differ from the config's, and the way out."""
    differ = [k for k in sorted({*found, *wanted}) if found.get(k) != wanted.get(k)]
    said = ", ".join(
        f"{SPEC_KEYS.get(k, k)}={found.get(k)!r} (the config: {wanted.get(k)!r})" for k in differ
    )
    settable = [k for k in differ if k in SPEC_KEYS and k in found]
    fix = " ".join(f"{SPEC_KEYS[k]}={found[k]}" for k in settable)
    use = f"to use it, give `{fix}`; " if fix and len(settable) == len(differ) else ""
    return (
        f"{dest} holds a synthetic cohort made with {said}. {use.capitalize()}"
        f"{'for' if use else 'For'} the config's cohort, set data.synthetic_dir to another folder "
        "(or delete this one)."
    )


def _real_metadata(target: Path) -> Path:
    """QTIM's real participants and file list, downloaded into `target`."""
    try:
        return fetch_structural(target).root
    except FetchError as err:
        raise FetchError(
            f"Could not download QTIM's participants.tsv and FILES.txt (ds004169, about 2 MB) "
            f"into {target}, which the synthetic cohort draws its families from: "
            f"{err.__cause__ or err} Check the network connection, or point data.qtim_root "
            "(QTIM_ROOT in the environment; --mirror for `modelcycle data fetch "
            "qtim-synthetic`) at a folder holding them."
        ) from err


@dataclass
class FunctionalSource:
    """Resting-state connectomes of QTIM (or its synthetic stand-in) as a twins `Cohort`.

    Args:
        root: A BIDS folder with rest runs; empty: the synthetic cohort.
        synthetic_dir: Where the synthetic cohort is (written there on first use).
        qtim_root: Real QTIM metadata the synthetic cohort samples families from
            (participants.tsv, FILES.txt); empty: downloaded (2 MB).
        families: Families in the synthetic cohort.
        n_volumes: Volumes per synthetic run.
        resolution_mm: Voxel size of the synthetic grid and the default atlas.
        seed: Seed of the synthetic cohort.
        atlas: `mni-kmeans` (offline), `schaefer` or `harvard-oxford`.
        n_parcels: Parcels (graph nodes) of the atlas.
        kind: `correlation`, `partial correlation` or `tangent`.
        masker: Signal cleaning.
        cache_dir: Content-addressed cache of parcel series.
        n_jobs: Worker processes for extraction.
        progress: Show progress bars.
    """

    #: Checked when the config is assembled, before anything is fetched or read.
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "kind": CONNECTIVITY_KINDS,
        "atlas": tuple(ATLASES),
    }
    RANGES: ClassVar[dict[str, Range]] = {
        "families": (1, None),
        "n_volumes": (1, None),
        "resolution_mm": (1, None),
        "n_parcels": (1, None),
        "n_jobs": (1, None),
        "seed": (0, None),
    }

    @staticmethod
    def CHECK(values: dict[str, Any]) -> None:  # noqa: N802 - the name config checks look up
        """Refuse masker settings nilearn cannot apply and an atlas size that does not exist."""
        masker = values.get("masker") or {}
        low, high = masker.get("low_pass"), masker.get("high_pass")
        for key, value in (("low_pass", low), ("high_pass", high)):
            if value is not None and not (is_number(value) and value > 0):
                raise ValueError(
                    f"masker.{key}={value!r}: give a frequency in Hz > 0, or null for none."
                )
        if low is not None and high is not None and high >= low:
            raise ValueError(
                f"masker.high_pass={high!r}: give a frequency below masker.low_pass={low!r} "
                "(the band kept runs from high_pass to low_pass Hz)."
            )
        volumes = masker.get("min_volumes", 1)
        if not (is_whole(volumes) and volumes >= 1):
            raise ValueError(f"masker.min_volumes={volumes!r}: give a whole number >= 1.")
        for key in ("detrend", "standardize"):
            if not isinstance(masker.get(key, True), bool):
                raise ValueError(f"masker.{key}={masker[key]!r}: give true or false.")
        parcels = values.get("n_parcels")
        if values.get("atlas") == "schaefer" and parcels not in SCHAEFER_SIZES:
            sizes = ", ".join(map(str, SCHAEFER_SIZES))
            raise ValueError(
                f"n_parcels={parcels!r}: the schaefer atlas comes in {sizes} parcels; "
                "give one of those, or another data.atlas."
            )

    @staticmethod
    def NODES(values: dict[str, Any]) -> tuple[str, int, str] | None:  # noqa: N802
        """The graph's node count: the setting that gives it, the count, how to raise it.

        None when it cannot be told from the config (a bad `n_parcels`, refused elsewhere).
        """
        if values.get("atlas") == "harvard-oxford":  # its own regions, whatever n_parcels says
            said = f"data.atlas=harvard-oxford ({HARVARD_OXFORD_REGIONS} regions)"
            return said, HARVARD_OXFORD_REGIONS, "choose data.atlas=schaefer or mni-kmeans"
        n_parcels = values.get("n_parcels", 32)
        if not is_whole(n_parcels):
            return None
        return f"data.n_parcels={n_parcels}", n_parcels, "raise data.n_parcels"

    root: Path | None = None
    synthetic_dir: Path = Path(".modelcycle/data/qtim-synthetic")
    qtim_root: Path | None = None
    families: int = 60
    n_volumes: int = 150
    resolution_mm: int = 8
    seed: int = 0
    atlas: str = "mni-kmeans"
    n_parcels: int = 32
    kind: str = "correlation"
    masker: MaskerSettings = field(default_factory=MaskerSettings)
    cache_dir: Path = Path(".modelcycle/cache/parcel-series")
    n_jobs: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.masker, dict):  # from Hydra config
            values = dict(self.masker)
            values["confounds"] = tuple(values.get("confounds", ()))
            self.masker = MaskerSettings(**values)
        for key, bounds in self.RANGES.items():  # as the config check, for direct use too
            value = getattr(self, key)
            if not in_range(value, bounds):
                raise DataError(
                    f"data.{key}={value}: give a whole number {describe_range(bounds)}."
                )

    def resolve_root(self) -> Path:
        """The BIDS root: `root`, or the synthetic cohort (written when missing)."""
        if self.root is not None:
            root = Path(self.root).expanduser()
            if not root.is_dir():
                raise DataError(f"data.root={root} is not a directory; point it at a BIDS copy.")
            return root
        # The cohort's own generating parcellation stays the default whatever atlas prepares
        # it: preparing with another atlas than the one that made the data is the real case.
        spec = SyntheticSpec(
            n_families=self.families,
            n_volumes=self.n_volumes,
            resolution_mm=self.resolution_mm,
            seed=self.seed,
        )
        return ensure_synthetic(Path(self.synthetic_dir), self.qtim_root, spec, self.progress)

    def parcellation(self) -> Parcellation:
        """The configured atlas."""
        return load_parcellation(
            self.atlas, self.n_parcels, self.resolution_mm, Path(self.cache_dir).parent / "atlases"
        )

    def prepare(self) -> tuple[Path, Prepared, Parcellation]:
        """Index the rest runs, pick one per subject, extract (or load) parcel series."""
        root = self.resolve_root()
        runs = pick_runs(index_rest_runs(root))
        if not runs:
            raise DataError(f"{root}: no `*task-rest*_bold.nii[.gz]` run found under it.")
        parcellation = self.parcellation()
        prepared = prepare_timeseries(
            runs, parcellation, self.masker, Path(self.cache_dir), self.n_jobs, self.progress
        )
        return root, prepared, parcellation

    def load(self) -> Cohort:
        """Connectome edges per subject, joined with participants; exclusions named."""
        root, prepared, parcellation = self.prepare()
        participants = read_participants(root / "participants.tsv")
        known = [s for s in prepared.subjects if s in participants.index]
        rows = [prepared.subjects.index(s) for s in known]
        matrices = connectomes([prepared.timeseries[i] for i in rows], self.kind)
        measures = edge_table(matrices, parcellation.names, known)
        skipped: dict[str, list[str]] = {}
        for failure in prepared.failures:  # the same reason for several runs: one line
            skipped.setdefault(f"run skipped: {failure.reason}", []).append(failure.subject)
        has_run = {*prepared.subjects, *(f.subject for f in prepared.failures)}
        exclusions = {
            "no resting-state run": sorted(set(participants.index) - has_run),
            **skipped,
            "rest run without a participants.tsv entry": sorted(
                set(prepared.subjects) - set(participants.index)
            ),
        }
        digest = hashlib.sha256(
            (root / "participants.tsv").read_bytes() + f"{prepared.digest()}|{self.kind}".encode()
        ).hexdigest()
        subjects = participants.loc[known]
        return Cohort(subjects, measures, {k: v for k, v in exclusions.items() if v}, digest)

    def retest(self, subjects: list[str]) -> pd.DataFrame:
        """Edges of each subject's rest run from another session than the one picked.

        For a same-person identification check (QTIM's test-retest group rescanned in
        ses-02); subjects with a single rest session are absent. Same atlas, masker and
        kind as `load` (tangent is refitted on these runs alone).
        """
        root = self.resolve_root()
        found = index_rest_runs(root)
        picked = pick_runs(found)
        second = {
            s: min(others, key=RestRun.sort_key)
            for s in subjects
            if (others := [r for r in found.get(s, []) if r.session != picked[s].session])
        }
        parcellation = self.parcellation()
        if not second:
            return edge_table(np.zeros((0, 0, 0)), parcellation.names, [])
        prepared = prepare_timeseries(
            second, parcellation, self.masker, Path(self.cache_dir), self.n_jobs, self.progress
        )
        matrices = connectomes(prepared.timeseries, self.kind)
        return edge_table(matrices, parcellation.names, prepared.subjects)

    def kinship(self) -> pd.DataFrame | None:
        """The hidden relation of related pairs (synthetic cohort only), else None."""
        path = self.resolve_root() / TRUTH_FILE
        if not path.is_file():
            return None
        return pd.read_csv(path, sep="\t", dtype=str)


@dataclass(frozen=True)
class PreparedDataset:
    """What `prepare_dataset` computed and wrote."""

    root: Path
    prepared: Prepared
    files: list[Path]


def prepare_dataset(source: FunctionalSource, out_dir: Path) -> PreparedDataset:
    """Prepare every subject's connectome; write them, the failure report and a plot.

    Files: `connectomes.npz` (subjects, parcels, matrices), `failures.tsv` (subject, file,
    reason of every skipped run) and `mean_connectome.png` (removed when every run was
    skipped, so no earlier plot outlives its connectomes). Each is written under a
    temporary name, and all are renamed into place once every one is written: a run that
    fails or is stopped while writing leaves the last finished run's files, none half written.
    """
    root, prepared, parcellation = source.prepare()
    out_dir.mkdir(parents=True, exist_ok=True)
    matrices = connectomes(prepared.timeseries, source.kind) if prepared.subjects else None
    npz, failures, plot = (
        out_dir / name for name in ("connectomes.npz", "failures.tsv", "mean_connectome.png")
    )
    files = [npz, failures] if matrices is None else [npz, failures, plot]
    with ExitStack() as stack:
        tmp = {path: stack.enter_context(replacing(path)) for path in files}
        np.savez(
            tmp[npz],
            subjects=np.array(prepared.subjects),
            parcels=np.array(parcellation.names),
            matrices=np.zeros((0, 0, 0)) if matrices is None else matrices,
        )
        rows = [(f.subject, f.path, f.reason) for f in prepared.failures]
        pd.DataFrame(rows, columns=["participant_id", "file", "reason"]).to_csv(
            tmp[failures], sep="\t", index=False
        )
        if matrices is not None:
            _plot_mean(matrices, source.kind, tmp[plot])
    if matrices is None:  # every run skipped: an earlier plot would outlive its connectomes
        plot.unlink(missing_ok=True)
    return PreparedDataset(root, prepared, files)


def _plot_mean(matrices: np.ndarray, kind: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.2))
    mean = matrices.mean(axis=0)
    limit = float(np.abs(mean - np.diag(np.diag(mean))).max()) or 1.0
    shown = ax.imshow(mean, cmap="RdBu_r", vmin=-limit, vmax=limit)
    fig.colorbar(shown, ax=ax, shrink=0.8)
    ax.set_title(f"mean {kind} over {len(matrices)} subjects")
    ax.set_xlabel("parcel")
    ax.set_ylabel("parcel")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    finally:  # a failed write must not leave the figure open in pyplot's list
        plt.close(fig)


def edge_table(matrices: np.ndarray, names: tuple[str, ...], subjects: list[str]) -> pd.DataFrame:
    """Upper-triangle edges of each matrix as columns `a~b`, one row per subject."""
    i, j = np.triu_indices(len(names), k=1)
    columns = [f"{names[a]}~{names[b]}" for a, b in zip(i, j, strict=True)]
    index = pd.Index(subjects, name="participant_id")
    values = matrices[:, i, j] if len(subjects) else np.zeros((0, len(columns)))
    return pd.DataFrame(values, index=index, columns=columns)
