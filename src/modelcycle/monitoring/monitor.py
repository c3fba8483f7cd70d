"""Monitor a served model version: its captured requests against its reference sample.

Used by `modelcycle monitor` (once, with a report on disk) and by the model server's
background drift check (on an interval, cached). Only captures answered by the same version
count: model outputs are compared too, and another version's outputs are not comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from modelcycle.digests import sha256_file
from modelcycle.monitoring.capture import LIVE, Capture, CaptureStore
from modelcycle.monitoring.drift import (
    DriftSettings,
    DriftSummary,
    captures_frame,
    compare,
    reference_frame,
)
from modelcycle.registry import Registry
from modelcycle.report_folders import new_report_dir
from modelcycle.servable import (
    REFERENCE,
    TARGET,
    ServableError,
    read_manifest,
    read_reference,
)
from modelcycle.serving.loading import (
    Runner,
    ServedModel,
    VariantChoice,
    load_served,
    split_alias,
)

BATCH = 256  # reference rows per model call


class SampleError(ServableError):
    """A version's reference sample (or the held-out rows standing in) cannot be read."""


@dataclass(frozen=True)
class DriftCheck:
    """A drift test with the two samples it compared (for plots and the Evidently report)."""

    summary: DriftSummary
    reference: pd.DataFrame
    current: pd.DataFrame


def served_reference(served: ServedModel, run: Runner | None = None) -> pd.DataFrame:
    """The version's reference sample as drift features plus its outputs on those rows.

    The sample is `reference.npz` of the saved model (hash-checked); a model saved without one
    falls back to its held-out rows. `run`: how to call the model (see `run_batched`).
    """
    inputs, unseen = _reference_sample(served)
    outputs = run_batched(served, inputs, run)
    return reference_frame(served.adapter, inputs, outputs, served.monitor_outputs, unseen)


def served_reference_inputs(served: ServedModel) -> list[np.ndarray]:
    """The version's reference inputs (hash-checked), or its held-out rows without one."""
    return _reference_sample(served)[0]


def _reference_sample(served: ServedModel) -> tuple[list[np.ndarray], int | None]:
    """The reference inputs and how many of their first rows never trained the model.

    None for the count when unknown (a model saved before it was recorded, or one without a
    reference, whose held-out rows stand in).
    """
    if served.directory is None:
        raise ServableError(f"{served.name} v{served.version}: no model directory to read.")
    directory = served.directory
    manifest = read_manifest(directory)
    name = REFERENCE if REFERENCE in manifest["files"] else "held_out.npz"
    path = directory / name
    if not path.is_file() or sha256_file(path) != manifest["files"][name]:
        raise SampleError(
            f"{path}: missing, cut short or changed (its sha256 is not the manifest's), so "
            f"{served.name} v{served.version} has no drift reference. Loading the version "
            "again copies the file anew from the registry; if the stored file is damaged "
            f"too, restore it or promote another version (`modelcycle promote {served.name} "
            "--version N`)."
        )
    inputs = read_reference(directory, manifest)
    if inputs is None:
        with np.load(path) as arrays:
            return [arrays[n] for n in manifest["inputs"]], None
    return inputs, manifest.get("reference_unseen")


def held_out_rows(served: ServedModel) -> tuple[list[np.ndarray], np.ndarray | None]:
    """The version's held-out inputs and their labels, when saved (hash-checked).

    Raises:
        ServableError: No model directory or a changed file.
    """
    if served.directory is None:
        raise ServableError(f"{served.name} v{served.version}: no model directory to read.")
    manifest = read_manifest(served.directory)
    path = served.directory / "held_out.npz"
    if sha256_file(path) != manifest["files"]["held_out.npz"]:
        raise ServableError(f"{path}: sha256 does not match its manifest.")
    with np.load(path) as arrays:
        inputs = [arrays[n] for n in manifest["inputs"]]
        labels = arrays[TARGET] if TARGET in arrays.files else None
    return inputs, labels


def run_batched(
    served: ServedModel, inputs: list[np.ndarray], run: Runner | None = None
) -> dict[str, np.ndarray]:
    """The served model's outputs on `inputs`, run in batches of BATCH rows.

    `run`: how to call the model, `served.run` by default (a server passes one that runs
    between its live batches).
    """
    call = run or served.run
    parts = [call([x[lo : lo + BATCH] for x in inputs]) for lo in range(0, len(inputs[0]), BATCH)]
    return {
        name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(served.output_names)
    }


def version_captures(
    store: CaptureStore, served: ServedModel, since: float | None, last: int | None
) -> list[Capture]:
    """Live captures of `served`'s version and variant, oldest first; `last` keeps the newest N.

    Traffic a client marked as its own (`X-Capture-Source`: a load test replaying the
    examples) is left out: it would read as drift.
    """
    return store.read(
        served.name, since, last, version=served.version, variant=served.variant, source=LIVE
    )


def check_drift(
    served: ServedModel,
    reference: pd.DataFrame,
    captures: list[Capture],
    settings: DriftSettings,
) -> DriftCheck:
    """Compare the captures with the reference (raises TooFewCapturesError when too few)."""
    current = captures_frame(captures)
    summary = compare(
        served.name, served.version, reference, current, served.answer_outputs, settings
    )
    summary.variant = served.variant
    return DriftCheck(summary, reference, current)


@dataclass(frozen=True)
class MonitorRun:
    """What `monitor` found and where it wrote the report."""

    check: DriftCheck
    report_dir: Path
    files: list[Path]


def monitor(
    registry: Registry,
    reference: str,
    workspace: Path,
    settings: DriftSettings,
    since: float | None = None,
    last: int | None = None,
    variant: VariantChoice | None = None,
    capture: Path | None = None,
    cache: Path | None = None,
) -> MonitorRun:
    """Test `NAME@ALIAS`'s captured requests for drift; write JSON, plots and Evidently report.

    Args:
        registry: Where the version is registered.
        reference: NAME@ALIAS of a served (exported) version.
        workspace: The report goes to its `reports/drift-...`.
        settings: Alpha and the fewest captures to test.
        since: Only captures at or after this time (unix seconds).
        last: Only the newest `last` captures.
        variant: The exported file the server ran (`serve.variant`): the reference sample's
            outputs come from the same one as the captured outputs. fp32 when None.
        capture: The capture store the server wrote (`serve.capture_path`); None: the
            workspace's `capture.db`.
        cache: Where the version's files are copied (`serve.cache_dir`); None: the
            workspace's `serving/`.

    Raises:
        FileNotFoundError: The workspace has no capture store (nothing was served).
        TooFewCapturesError: Fewer captures than `settings.min_captures`.
    """
    from modelcycle.monitoring.drift_report import write_drift_report

    split_alias(reference, "monitor")  # the form first, before the capture store is looked for
    registry.resolve(reference)  # then the model and alias: else "no capture store" said it
    store_path = capture or workspace / "capture.db"
    if not store_path.is_file():
        raise FileNotFoundError(
            f"{store_path}: no capture store; serve the model (`modelcycle serve {reference}`) "
            "with serve.capture=true and send requests first, or point workspace= (or "
            "serve.capture_path=, where the server was told to capture) elsewhere."
        )
    cache = cache or workspace / "serving"
    served = load_served(registry, reference, cache, threads=1, variant=variant)
    with CaptureStore(store_path) as store:
        captures = version_captures(store, served, since, last)
    check = check_drift(served, served_reference(served), captures, settings)
    out = new_report_dir(workspace, f"drift-{served.name}-v{served.version}")
    files = write_drift_report(check, out)
    return MonitorRun(check, out, files)
