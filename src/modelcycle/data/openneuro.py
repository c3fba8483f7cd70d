"""Download files of an OpenNeuro dataset and record what was downloaded.

`fetch_openneuro` calls `openneuro.download` (openneuro-py) for the requested files, hashes
every downloaded file with SHA-256 and writes the hashes to a manifest
(`modelcycle-fetch.json`) in the target directory. The manifest's `digest` is one hash that
identifies the data a run was trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path

from modelcycle.digests import sha256_file
from modelcycle.messages import clause

log = logging.getLogger(__name__)

MANIFEST_NAME = "modelcycle-fetch.json"


class FetchError(RuntimeError):
    """Data could not be downloaded; the message names the dataset, the directory and the fix."""


@dataclass(frozen=True)
class FetchRecord:
    """What one download put on disk.

    Attributes:
        dataset: OpenNeuro accession number, e.g. `ds004169`.
        tag: Snapshot tag requested, or None for the latest snapshot.
        root: Directory holding the downloaded files.
        files: Relative POSIX path -> SHA-256 hex digest of each downloaded file.
        fetched_at: When the download finished, ISO-8601 in UTC.
    """

    dataset: str
    tag: str | None
    root: Path
    files: dict[str, str]
    fetched_at: str

    def digest(self) -> str:
        """Return one SHA-256 over the sorted `path:sha` lines, identifying the data."""
        lines = "\n".join(f"{path}:{sha}" for path, sha in sorted(self.files.items()))
        return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def fetch_openneuro(
    dataset: str,
    target: Path,
    include: Sequence[str],
    *,
    tag: str | None = None,
    exclude: Sequence[str] = (),
) -> FetchRecord:
    """Download files of an OpenNeuro dataset and write their hashes to a manifest.

    Args:
        dataset: OpenNeuro accession number, e.g. `ds004169`.
        target: Directory to download into (created if missing).
        include: Glob patterns of the files to download, relative to the dataset root.
        tag: Snapshot tag; None downloads the latest snapshot.
        exclude: Glob patterns of files not to download.

    Returns:
        The record also written to `target / MANIFEST_NAME`.

    Raises:
        FetchError: The download failed (no network, DNS failure, HTTP error), or an
            `include` pattern matched no file after the download.
    """
    target.mkdir(parents=True, exist_ok=True)
    log.info("Fetching %s (tag %s) into %s: %s", dataset, tag or "latest", target, include)
    _download(dataset, target, include, tag=tag, exclude=exclude)
    files = hash_tree(target, include, exclude=exclude)
    _check_all_matched(dataset, target, include, files)
    record = FetchRecord(dataset, tag, target, files, _now())
    write_manifest(record)
    log.info("Hashed %d file(s) of %s; digest %s", len(files), dataset, record.digest())
    return record


def copy_mirror(dataset: str, mirror: Path, target: Path, include: Sequence[str]) -> FetchRecord:
    """Copy a dataset's files from a local copy (a shared drive, a colleague's download).

    The files are hashed and recorded exactly as after a download, with `tag` saying where
    they came from, so lineage and data hashes do not depend on how the data arrived.

    Raises:
        FetchError: `mirror` is not a directory, or an `include` pattern matched none of it.
    """
    if not mirror.is_dir():
        raise FetchError(
            f"Mirror {mirror} of {dataset} is not a directory; give a folder that holds the "
            "dataset's files (e.g. a BIDS root with participants.tsv), or leave it out to download."
        )
    files = hash_tree(mirror, include)
    _check_all_matched(
        dataset, mirror, include, files, "Point the mirror at a complete copy of the dataset."
    )
    for rel in files:
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(mirror / rel, target / rel)
    record = FetchRecord(dataset, f"mirror:{mirror.resolve()}", target, files, _now())
    write_manifest(record)
    log.info(
        "Copied %d file(s) of %s from %s; digest %s", len(files), dataset, mirror, record.digest()
    )
    return record


def _now() -> str:
    return datetime.now(UTC).isoformat()


def hash_tree(
    root: Path, patterns: Sequence[str], *, exclude: Sequence[str] = ()
) -> dict[str, str]:
    """Hash every regular file under `root` that matches one of `patterns`.

    Patterns are `fnmatch`-style and relative to `root` (`*` also matches `/`); a pattern
    naming a directory matches everything under it. The manifest itself is never hashed.

    Args:
        root: Directory to search.
        patterns: Glob patterns such as `"derivatives/freesurfer_5.3/*"`.
        exclude: Glob patterns of files to leave out even if they match `patterns`.

    Returns:
        Relative POSIX path -> SHA-256 hex digest, sorted by path.
    """
    hashes: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST_NAME or not path.is_file():
            continue
        if _matches_any(rel, patterns) and not _matches_any(rel, exclude):
            hashes[rel] = sha256_file(path)
    return hashes


def read_manifest(root: Path) -> FetchRecord | None:
    """Read the manifest written by `fetch_openneuro` in `root`.

    Args:
        root: Directory the dataset was downloaded into.

    Returns:
        The record (with `root` set to the directory it was read from), or None when there
        is no manifest or it cannot be read, so that the caller downloads again.
    """
    path = root / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return FetchRecord(
            dataset=str(data["dataset"]),
            tag=data["tag"],
            root=root,
            files={str(k): str(v) for k, v in data["files"].items()},
            fetched_at=str(data["fetched_at"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        log.warning("Ignoring unreadable manifest %s (%s); downloading again", path, err)
        return None


def write_manifest(record: FetchRecord) -> Path:
    """Write `record` as JSON to `record.root / MANIFEST_NAME` and return that path."""
    path = record.root / MANIFEST_NAME
    data = {**asdict(record), "root": str(record.root)}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def _download(
    dataset: str, target: Path, include: Sequence[str], *, tag: str | None, exclude: Sequence[str]
) -> None:
    import openneuro  # heavy import (httpx, tqdm), only needed when downloading

    try:
        openneuro.download(
            dataset=dataset,
            tag=tag,
            target_dir=target,
            include=list(include),
            exclude=list(exclude) or None,
        )
    except Exception as err:
        raise FetchError(
            f"Could not download OpenNeuro dataset {dataset} into {target}: {clause(err)}. "
            "Check the network connection, or point to a local copy of the dataset "
            f"(e.g. `data.root=/path/to/{dataset}`)."
        ) from err


def _check_all_matched(
    dataset: str,
    target: Path,
    include: Sequence[str],
    files: dict[str, str],
    fix: str = "Check the patterns against the dataset's file list on openneuro.org.",
) -> None:
    unmatched = [p for p in include if not any(_matches(rel, p) for rel in files)]
    if unmatched:
        raise FetchError(
            f"In {target}, no file of {dataset} matches include pattern(s) {unmatched}. {fix}"
        )


def _matches_any(rel: str, patterns: Sequence[str]) -> bool:
    return any(_matches(rel, pattern) for pattern in patterns)


def _matches(rel: str, pattern: str) -> bool:
    pattern = pattern.strip("/")
    return fnmatchcase(rel, pattern) or fnmatchcase(rel, f"{pattern}/*")
