"""Load a registered model for serving: only its exported ONNX, only if its hash matches."""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelcycle.digests import sha256_file
from modelcycle.export_status import refusal
from modelcycle.registry import COPY_MARKER, Registered, Registry
from modelcycle.servable import REFERENCE, ServableError, read_manifest
from modelcycle.serving.adapter import ServingAdapter

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A model that must not or cannot be served; the message says what to do."""


#: A model call: batched inputs in, batched outputs out (`ServedModel.run`, or a wrapper).
Runner = Callable[[list[np.ndarray]], list[np.ndarray]]

#: Exported ONNX file of each servable variant, in the version's `onnx/` directory.
VARIANT_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
#: Files of a saved model read while serving: examples, and the drift reference.
SAMPLES = ("held_out.npz", REFERENCE)


def adapter_class(task: str) -> type[ServingAdapter]:
    """The serving adapter of the task named `task` (UnknownTaskError when there is none).

    A built-in task's comes from `modelcycle.tasks.BUILTIN`, and an outside package's from
    its `modelcycle.adapters` entry point, both without the task's training code; a task
    with neither, from its class (importing torch and Lightning).
    """
    from importlib.metadata import entry_points

    from modelcycle.tasks import ADAPTER_ENTRY_POINT_GROUP, BUILTIN

    if task in BUILTIN:
        module, _, name = BUILTIN[task].adapter.partition(":")
        adapter: type[ServingAdapter] = getattr(importlib.import_module(module), name)
        return adapter
    for ep in entry_points(group=ADAPTER_ENTRY_POINT_GROUP, name=task):
        try:
            loaded = ep.load()
        except Exception as err:  # the package's own import error, said with the entry point
            raise ModelLoadError(
                f"The {ADAPTER_ENTRY_POINT_GROUP} entry point {task} ({ep.value}) does not "
                f"load: {type(err).__name__}: {err}"
            ) from err
        if not (isinstance(loaded, type) and issubclass(loaded, ServingAdapter)):
            raise ModelLoadError(
                f"The {ADAPTER_ENTRY_POINT_GROUP} entry point {task} ({ep.value}) is not a "
                "ServingAdapter subclass; point it at the task's adapter class."
            )
        return loaded
    from modelcycle.tasks import get_task

    return get_task(task).serving


def task_adapter(task: str, reference: str) -> type[ServingAdapter]:
    """`adapter_class(task)`, or a ModelLoadError saying which package a version needs.

    A version of a task from another package (a `modelcycle.tasks` entry point) is served
    only where that package is installed; without it the server failed in its start-up,
    with a traceback ending in "Unknown task".
    """
    try:
        return adapter_class(task)
    except KeyError as err:  # UnknownTaskError, caught without importing the training code
        raise ModelLoadError(
            f"{reference} is a model of the task {task!r}, which this environment does not "
            f"have ({err}). Install the package that provides it (its `modelcycle.tasks` "
            "entry point) where the model is served."
        ) from err


@dataclass(frozen=True)
class VariantChoice:
    """Which exported file a server runs (`serve.variant`), and what int8 may cost.

    Attributes:
        name: "fp32" or "int8".
        int8_max_drop: Largest drop of the held-out metric (fp32 minus int8, absolute) that
            int8 may show at export (`serve.int8_max_drop`); a negative value demands a gain.
    """

    name: str = "fp32"
    int8_max_drop: float = 0.01

    def __post_init__(self) -> None:
        if self.name not in VARIANT_FILES:
            raise ValueError(
                f"serve.variant={self.name!r}: choose one of {', '.join(VARIANT_FILES)}."
            )
        if isinstance(self.int8_max_drop, bool) or not isinstance(self.int8_max_drop, int | float):
            raise ValueError(
                f"serve.int8_max_drop={self.int8_max_drop!r}: give a number, the largest "
                "held-out metric drop int8 may show (e.g. 0.01)."
            )


@dataclass
class ServedModel:
    """One model in a server: an ONNX Runtime session plus its task's adapter."""

    name: str
    alias: str
    version: str
    task: str
    session: Any  # onnxruntime.InferenceSession
    input_names: list[str]
    output_names: list[str]
    adapter: ServingAdapter
    examples: list[dict[str, Any]] = field(default_factory=list)
    lineage: dict[str, str] = field(default_factory=dict)
    directory: Path | None = None  # the downloaded version: manifest, held-out and reference
    monitor_outputs: list[str] = field(default_factory=list)  # recorded, never answered
    variant: str = "fp32"  # which exported file runs: a key of VARIANT_FILES
    # each output's ONNX shape, batch axis first (a name where a size varies)
    output_shapes: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def answer_outputs(self) -> list[str]:
        """The outputs a response carries: all but the monitoring-only ones."""
        return [n for n in self.output_names if n not in self.monitor_outputs]

    def answer_schema(self) -> dict[str, Any]:
        """The JSON schema of the `outputs` of this model's answers (the task's `encode`)."""
        return self.adapter.answer_schema({n: self.output_shapes[n] for n in self.answer_outputs})

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run the session on batched inputs (each with a leading batch axis)."""
        feeds = dict(zip(self.input_names, inputs, strict=True))
        return list(self.session.run(self.output_names, feeds))

    def describe(self) -> dict[str, Any]:
        """What GET /v1/models says about this model."""
        return {
            "name": self.name,
            "alias": self.alias,
            "version": self.version,
            "task": self.task,
            "variant": self.variant,
            "inputs": self.input_names,
            "outputs": self.answer_outputs,
            "monitor_outputs": self.monitor_outputs,
            "answer_schema": self.answer_schema(),
            "lineage": self.lineage,
            "schema": self.adapter.request_schema(),
            "media_types": ["application/json", *self.adapter.byte_types],
            "request_parts": list(self.adapter.request_parts),
            "image_input": self.adapter.image_input(),
        }


def split_alias(reference: str, command: str = "serve") -> tuple[str, str]:
    """NAME and ALIAS of `NAME@ALIAS`: served models go by an alias, which can move.

    `command` (serve, monitor, robustness) is the one the refusal of another form names.
    """
    if "@" not in reference or not all(reference.split("@", 1)):
        name = re.split(r"[/:@]", reference, maxsplit=1)[0] or "twins"
        if command == "serve":
            raise ModelLoadError(
                f"{reference!r}: give NAME@ALIAS, e.g. {name}@champion (a served model is "
                "named by its alias, which promote moves)."
            )
        version = reference.rpartition("/")[2] if "/" in reference else ""
        version = version if version.isdigit() else "N"
        raise ModelLoadError(
            f"{reference!r}: {command} takes NAME@ALIAS, e.g. {name}@champion; for version "
            f"{version}, point an alias at it first: `modelcycle promote {name} --version "
            f"{version} --alias NAME`, then `modelcycle {command} {name}@NAME`."
        )
    name, alias = reference.split("@", 1)
    return name, alias


def load_served(
    registry: Registry,
    reference: str,
    cache: Path,
    threads: int,
    variant: VariantChoice | None = None,
) -> ServedModel:
    """Resolve `NAME@ALIAS`, check the variant's exported ONNX against its sha256, open it.

    The variant is fp32 unless `variant` says int8, which must also pass its metric check.
    """
    choice = variant or VariantChoice()
    name, alias = split_alias(reference)
    version = registry.resolve(reference)
    local, onnx_path = fetch_checked(registry, version, reference, cache, choice)
    manifest = read_manifest(local)
    adapter = task_adapter(manifest["task"], reference)(manifest["info"])
    session = _session(onnx_path, threads)
    served = ServedModel(
        name=name,
        alias=alias,
        version=version.version,
        task=manifest["task"],
        session=session,
        input_names=manifest["inputs"],
        output_names=manifest["outputs"],
        output_shapes={o.name: list(o.shape) for o in session.get_outputs()},
        monitor_outputs=list(manifest.get("monitor_outputs", [])),
        adapter=adapter,
        lineage=_lineage_summary(version.tags, choice.name),
        directory=local,
        variant=choice.name,
    )
    served.examples = _examples(local, manifest, served)
    log.info("Loaded %s version %s (%s) from %s", name, version.version, alias, onnx_path)
    folder = _copy_folder(cache, version)
    if (folder / COPY_MARKER).is_file():
        os.utime(folder / COPY_MARKER)  # when it was last loaded, for `prune_copies`
    prune_copies(cache, name, keep=folder)
    return served


#: Local copies of a model's versions kept in a cache: the most recently loaded ones.
KEEP_COPIES = 3
#: Seconds since a copy was last loaded before it may be removed (a server that loaded it
#: may still read its drift reference).
PRUNE_AFTER = 3600.0


def _copy_folder(cache: Path, version: Registered) -> Path:
    """Where `version` is copied in `cache`."""
    return cache / f"{version.name}-v{version.version}"


def prune_copies(
    cache: Path,
    name: str,
    keep: Path | None = None,
    copies: int = KEEP_COPIES,
    after: float = PRUNE_AFTER,
) -> list[Path]:
    """Remove the local copies of model `name`'s versions loaded least recently; the removed.

    A server that follows its alias copied every version it was moved to and kept them all
    (44 MB for a sign-language MNIST version, on a pod's small disk). The `copies` most recently
    loaded stay (servers of one workspace may serve several aliases), `keep` too, and any
    loaded in the last `after` seconds; a later load copies a removed version again.
    """
    from modelcycle.tracking import workspace_lock

    found = []
    for folder in cache.glob(f"{name}-v*"):
        marker = folder / COPY_MARKER
        if folder.name[len(name) + 2 :].isdigit() and marker.is_file():
            found.append((marker.stat().st_mtime, folder))
    found.sort(reverse=True)
    removed = []
    for loaded, folder in found[copies:]:
        if folder == keep or time.time() - loaded < after:
            continue
        with workspace_lock(folder):  # not while a process copies it (`Registry.download`)
            marker = folder / COPY_MARKER
            if not marker.is_file() or time.time() - marker.stat().st_mtime < after:
                continue  # loaded again meanwhile
            marker.unlink()
            shutil.rmtree(folder, ignore_errors=True)
        log.info(
            "Removed the local copy %s (last loaded %.0f h ago)",
            folder,
            (time.time() - loaded) / 3600,
        )
        removed.append(folder)
    return removed


def fetch_checked(
    registry: Registry, version: Registered, reference: str, cache: Path, choice: VariantChoice
) -> tuple[Path, Path]:
    """Copy `version` into `cache` once; its folder and the variant's ONNX, hash-checked.

    A copy whose ONNX or samples (held-out rows, drift reference) do not match is copied
    again. A sample damaged in the registry itself is left to what reads it: the server
    still serves, and its drift status names the file.

    Raises:
        ModelLoadError: Naming the stored file, when its sha256 is not the export's.
    """
    expected = expected_sha256(version, reference, choice)
    file = VARIANT_FILES[choice.name]
    for fresh in (False, True):  # a local copy changed on disk is fetched once more
        local = registry.download(version, _copy_folder(cache, version), fresh)
        onnx_path = local / "onnx" / file
        actual = sha256_file(onnx_path) if onnx_path.is_file() else "missing"
        damaged = None if fresh else _damaged_sample(local)
        if actual == expected and damaged is None:
            return local, onnx_path
        if damaged is not None:
            log.warning("%s: sha256 is not its manifest's; copying the version again", damaged)
        else:
            log.warning("%s: sha256 %s, not the export's", onnx_path, actual[:12])
    # The copy is fresh: the damaged file is the stored one, which the message must name.
    raise ModelLoadError(
        f"{version.source}/onnx/{file}: sha256 {actual[:12]} does not match the "
        f"{choice.name} export recorded on {version.name} version {version.version} "
        f"({expected[:12]}): the stored file was changed or cut short since the export; "
        f"re-run `modelcycle export {reference}` to write it again."
    )


def _damaged_sample(local: Path) -> Path | None:
    """The first sample of a local copy that does not match its manifest, if any."""
    try:
        files = read_manifest(local)["files"]
    except (ServableError, KeyError, TypeError):
        return local / "manifest.json"
    for name in SAMPLES:
        path = local / name
        if name in files and (not path.is_file() or sha256_file(path) != files[name]):
            return path
    return None


def expected_sha256(version: Registered, reference: str, choice: VariantChoice) -> str:
    """The recorded sha256 of the variant's file, once the version may serve it.

    Raises:
        ModelLoadError: A last export that failed or has not finished, no export of the
            variant, or an int8 export without a recorded held-out metric delta or with a
            drop beyond `choice.int8_max_drop`.
    """
    tags = version.tags
    where = f"{version.name} version {version.version}"
    if (why := refusal(tags, where, reference)) is not None:
        raise ModelLoadError(why)
    expected = tags.get(f"export.{choice.name}.sha256")
    if not expected:
        raise ModelLoadError(
            f"{where} has no {choice.name} ONNX export; run `modelcycle export {reference}` "
            "first (only exported ONNX is ever served)."
        )
    if choice.name == "int8":
        _check_int8_drop(tags, where, choice.int8_max_drop)
    return expected


def _check_int8_drop(tags: dict[str, str], where: str, max_drop: float) -> None:
    metric = tags.get("export.metric.name") or "held-out metric"
    if "export.metric.delta" not in tags:
        raise ModelLoadError(
            f"{where}: its export recorded no int8 {metric} delta (the task defines no held-out "
            "metric, or the model was saved without held-out labels), so int8 cannot be "
            "checked; serve fp32 (serve.variant=fp32)."
        )
    fp32, int8 = float(tags["export.metric.fp32"]), float(tags["export.metric.int8"])
    if fp32 - int8 > max_drop:
        rows = tags.get("export.metric.rows")
        on = f" on {float(rows):.0f} held-out rows" if rows else ""
        finer = " (more task.held_out_rows measure it finer)" if rows else ""
        raise ModelLoadError(
            f"{where}: int8 {metric} {int8:.4f} against fp32 {fp32:.4f}{on}, a drop of "
            f"{fp32 - int8:.4f}, more than serve.int8_max_drop={max_drop:g}{finer}; serve "
            "fp32 (serve.variant=fp32), or raise serve.int8_max_drop if that loss is acceptable."
        )


def warm_up(
    served: ServedModel, batch_sizes: tuple[int, ...] = (1, 8), run: Runner | None = None
) -> None:
    """Run the session once per batch size so the first request pays no start-up cost.

    `run`: how to call the model (default `served.run`), e.g. between a server's batches.
    """
    if not served.examples:
        return
    rows = served.adapter.decode(
        served.adapter.request_type.model_validate(served.examples[0]["request"])
    )
    for size in batch_sizes:
        (run or served.run)([np.repeat(row, size, axis=0) for row in rows])


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Spinning intra-op threads burn a core between batches that the event loop needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _examples(local: Path, manifest: dict[str, Any], served: ServedModel) -> list[dict[str, Any]]:
    if sha256_file(local / "held_out.npz") != manifest["files"]["held_out.npz"]:
        raise ModelLoadError(f"{local / 'held_out.npz'}: hash does not match its manifest.")
    with np.load(local / "held_out.npz") as arrays:
        held_out = [arrays[n] for n in manifest["inputs"]]
        target = arrays["__target__"] if "__target__" in arrays.files else None
    return served.adapter.examples(held_out, target)


def _lineage_summary(tags: dict[str, str], variant: str) -> dict[str, str]:
    """What `GET /v1/models` says of a version's origin: code, data, gate, file, metric.

    A task package with a recorded commit (`lineage.packages_git`) adds `PACKAGE.version`,
    `PACKAGE.git_sha` and `PACKAGE.git_dirty`: its code is not modelcycle's `git_sha`.
    """
    keep = ["lineage.git_sha", "lineage.git_dirty", "lineage.data_hash", "gate.metric"]
    keep.append(f"export.{variant}.sha256")
    if variant == "int8":
        keep += ["export.int8.method", "export.metric.name", "export.metric.delta"]
    summary = {k.split(".", 1)[1]: tags[k] for k in keep if k in tags}
    versions = _json_object(tags.get("lineage.packages"))
    for name, state in _json_object(tags.get("lineage.packages_git")).items():
        if isinstance(state, dict):
            if name in versions:
                summary[f"{name}.version"] = str(versions[name])
            summary[f"{name}.git_sha"] = str(state.get("git_sha", "unknown"))
            summary[f"{name}.git_dirty"] = str(state.get("git_dirty", "unknown"))
    summary["variant"] = variant
    metric = tags.get("gate.metric")
    if metric and f"metric.model_{metric}_mean" in tags:
        summary["cv_" + metric] = tags[f"metric.model_{metric}_mean"]
    return summary


def _json_object(text: str | None) -> dict[str, Any]:
    """A JSON object tag as a dict; {} when missing or not an object (an older version's)."""
    try:
        said = json.loads(text or "{}")
    except ValueError:
        return {}
    return said if isinstance(said, dict) else {}


def default_threads() -> int:
    """ONNX Runtime intra-op threads: the machine's cores (at least one)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
