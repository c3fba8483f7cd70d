"""A small BIDS index: the resting-state runs of every subject, and which one to use.

Only what preparation needs is read: file names (entities `sub`, `ses`, `task`, `run`,
`space`, `desc`), the JSON sidecar's `RepetitionTime` (with BIDS inheritance from a
top-level `task-rest_bold.json`) and an fMRIPrep-style confounds table beside the run.

Rule for one run per subject: the earliest session with a rest run (ses-01 before ses-02,
so subjects with rest only in ses-02 are kept); within it, the lowest run number; a file
with a `space-` entity (a preprocessed derivative) is preferred over raw when both exist.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from modelcycle.data.tables import DataError

ENTITY = re.compile(r"([a-zA-Z]+)-([a-zA-Z0-9]+)")
BOLD_SUFFIX = re.compile(r"_bold\.nii(\.gz)?$")


@dataclass(frozen=True)
class RestRun:
    """One resting-state BOLD run and its companions."""

    subject: str  # "sub-0001"
    session: str  # "ses-01", or "" when the dataset has no sessions
    run: int
    bold: Path
    repetition_time: float | None
    confounds: Path | None
    preprocessed: bool
    problem: str | None = None  # why the run cannot be used (a bad sidecar): it is skipped

    def sort_key(self) -> tuple[str, int, int]:
        """Order of preference: earliest session, lowest run, derivative before raw."""
        return (self.session, self.run, 0 if self.preprocessed else 1)


def entities(name: str) -> dict[str, str]:
    """BIDS key-value entities of a file name, e.g. {"sub": "0001", "task": "rest"}."""
    stem = BOLD_SUFFIX.sub("", name)
    return {k: v for k, v in ENTITY.findall(stem)}


def index_rest_runs(root: Path, task: str = "rest") -> dict[str, list[RestRun]]:
    """Every `task-<task>` BOLD run under `root` (derivatives included), by subject.

    Raises:
        DataError: `root` is not a BIDS folder (no dataset_description.json).
    """
    if not (root / "dataset_description.json").is_file():
        raise DataError(
            f"{root}: no dataset_description.json, so not a BIDS dataset. Point data.root at "
            "a QTIM copy, or write the offline cohort with `modelcycle data fetch qtim-synthetic`."
        )
    runs: dict[str, list[RestRun]] = {}
    for path in sorted(root.rglob(f"*task-{task}*_bold.nii*")):
        ent = entities(path.name)
        if ent.get("task") != task or "sub" not in ent or not BOLD_SUFFIX.search(path.name):
            continue
        try:
            tr, problem = repetition_time(path, root, task), None
        except DataError as err:  # one run's sidecar: that run is skipped, not the dataset
            tr, problem = None, str(err)
        run = RestRun(
            subject=f"sub-{ent['sub']}",
            session=f"ses-{ent['ses']}" if "ses" in ent else "",
            run=int(ent.get("run", "1")) if ent.get("run", "1").isdigit() else 1,
            bold=path,
            repetition_time=tr,
            confounds=_confounds(path),
            preprocessed="space" in ent,
            problem=problem,
        )
        runs.setdefault(run.subject, []).append(run)
    return runs


def pick_runs(runs: dict[str, list[RestRun]]) -> dict[str, RestRun]:
    """One run per subject by the module's documented rule."""
    return {subject: min(found, key=RestRun.sort_key) for subject, found in sorted(runs.items())}


def repetition_time(bold: Path, root: Path, task: str = "rest") -> float | None:
    """RepetitionTime from the run's sidecar, else the dataset-level `task-<task>_bold.json`.

    Raises:
        DataError: A sidecar that is not a JSON object, or whose RepetitionTime is not a
            number of seconds.
    """
    stem = BOLD_SUFFIX.sub("", bold.name)
    for sidecar in (bold.with_name(f"{stem}_bold.json"), root / f"task-{task}_bold.json"):
        if sidecar.is_file():
            try:
                fields = json.loads(sidecar.read_text())
            except ValueError as err:
                raise DataError(f"{sidecar}: not valid JSON ({err}); fix or remove it.") from err
            if not isinstance(fields, dict):
                raise DataError(
                    f"{sidecar}: a JSON {type(fields).__name__}, not an object of fields; "
                    "fix or remove it."
                )
            value = fields.get("RepetitionTime")
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise DataError(
                    f"{sidecar}: RepetitionTime={value!r}; give the seconds between volumes "
                    "(a number > 0)."
                )
            return float(value)
    return None


def _confounds(bold: Path) -> Path | None:
    """FMRIPrep's `..._desc-confounds_timeseries.tsv` of the run, when present."""
    ent = entities(bold.name)
    prefix = "_".join(f"{k}-{ent[k]}" for k in ("sub", "ses", "task", "run") if k in ent)
    for name in (
        f"{prefix}_desc-confounds_timeseries.tsv",
        f"{prefix}_desc-confounds_regressors.tsv",
    ):
        candidate = bold.with_name(name)
        if candidate.is_file():
            return candidate
    return None
