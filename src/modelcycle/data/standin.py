"""Offline stand-ins on disk: written once, recorded, never taken for the real data.

A stand-in is written into the folder a download would fill (`data.download_dir`), in the
real layout, so everything downstream reads it as it would read the real files. A manifest
beside it (`MANIFEST`) records what was written and with which settings. With it:

- a run without `data.synthetic=true` refuses the folder instead of training on drawn data
  while its config and lineage say the data are real;
- a run asking for a stand-in drawn with other settings (another seed, more tiles) refuses
  it too, instead of reusing whatever an earlier run left there;
- a run asking for a stand-in where the real files (or an unrecorded stand-in) lie refuses
  them rather than guessing;
- a local copy (`data.root`) is never a stand-in: it is refused when it holds one, and
  beside `data.synthetic=true` (`check_root`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelcycle.data.tables import DataError

MANIFEST = "modelcycle-standin.json"


def standin_root(
    target: Path,
    dataset: str,
    spec: dict[str, Any],
    synthetic: bool,
    present: bool,
    write: Callable[[], object],
) -> Path | None:
    """The stand-in's root when the run uses one (written on first use), else None.

    Args:
        target: The download folder (`data.download_dir`).
        dataset: The dataset's name, for messages.
        spec: The settings the stand-in is drawn with (seed, sizes); recorded and compared.
        synthetic: Whether the run asks for the stand-in (`data.synthetic`).
        present: Whether `target` already holds the dataset's files.
        write: Writes the stand-in into `target`.

    Returns:
        `target` when the run reads the stand-in, or None when the run wants the real data
        and `target` holds no stand-in (the caller then reads or downloads it).

    Raises:
        DataError: `target` holds a stand-in and the run wants the real data, a stand-in
            drawn with other settings, or files no manifest describes where a stand-in
            should be written; each names the folder and the ways out.
    """
    manifest = target / MANIFEST
    wanted = json.loads(json.dumps({"dataset": dataset, **spec}))
    found = json.loads(manifest.read_text()) if manifest.is_file() else None
    if found is None:
        if not synthetic:
            return None
        if present:
            raise DataError(
                f"data.synthetic=true, but {target} holds {dataset} files with no record of a "
                f"stand-in ({MANIFEST}): the real data, or a stand-in written before stand-ins "
                f"were recorded. Set data.download_dir to another folder for the stand-in, or "
                f"drop data.synthetic=true to use these files."
            )
        write()
        manifest.write_text(json.dumps(wanted, indent=2) + "\n")
        return target
    if not synthetic:
        raise DataError(
            f"{target} holds the offline {dataset} stand-in (drawn data, written by "
            f"data.synthetic=true), not the real data. Give data.synthetic=true to use it, or "
            f"set data.download_dir to another folder to download {dataset}."
        )
    if found != wanted:
        differ = [k for k in sorted(set(found) | set(wanted)) if found.get(k) != wanted.get(k)]
        had = " ".join(f"data.{k}={found.get(k)}" for k in differ)
        asked = " ".join(f"data.{k}={wanted.get(k)}" for k in differ)
        raise DataError(
            f"{target} holds a {dataset} stand-in drawn with {had}; this run asks for {asked}. "
            f"Give {had} to use it (a training seed of its own stays free: seed=N), or set "
            f"data.download_dir to another folder for a new stand-in."
        )
    return target


def check_root(root: Path, dataset: str, synthetic: bool) -> None:
    """Refuse `data.root` beside `data.synthetic=true`, or a `data.root` holding a stand-in.

    A stand-in is written to and read from `data.download_dir` only, where its manifest
    is checked; `data.root` names a copy of the real data.

    Raises:
        DataError: Naming the setting or the folder and the ways out.
    """
    if synthetic:
        raise DataError(
            f"data.synthetic=true and data.root={root} are both set: a stand-in is written to "
            f"and read from data.download_dir, never data.root. Drop data.root to use the "
            f"stand-in, or drop data.synthetic=true to read {root}."
        )
    if (root / MANIFEST).is_file():
        raise DataError(
            f"data.root={root} holds the offline {dataset} stand-in (drawn data, written by "
            f"data.synthetic=true), not the real data. Point data.root at a copy of {dataset}, "
            f"or give data.synthetic=true data.download_dir={root} without data.root to use "
            "the stand-in."
        )
