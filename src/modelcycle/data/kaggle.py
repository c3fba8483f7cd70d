"""Download a Kaggle dataset with kagglehub and record the sha256 of every file.

kagglehub reads credentials from `~/.kaggle/kaggle.json` or `KAGGLE_USERNAME`/`KAGGLE_KEY`;
public datasets also download without them. The record is the same manifest
(`modelcycle-fetch.json`) as OpenNeuro downloads write, so a run's data hash is one digest.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from modelcycle.data.openneuro import FetchError, FetchRecord, hash_tree, write_manifest
from modelcycle.messages import clause

log = logging.getLogger(__name__)


def fetch_kaggle(handle: str, target: Path) -> FetchRecord:
    """Download Kaggle dataset `handle` (owner/name) into `target` and hash its files.

    Raises:
        FetchError: The download failed (no network, unknown dataset, missing credentials).
    """
    import kagglehub

    target.mkdir(parents=True, exist_ok=True)
    log.info("Downloading Kaggle dataset %s into %s", handle, target)
    try:
        kagglehub.dataset_download(handle, output_dir=str(target))
    except Exception as err:  # kagglehub raises many kinds: network, HTTP, auth
        raise FetchError(
            f"Could not download Kaggle dataset {handle} into {target}: {clause(err)}. Check the "
            "network and Kaggle credentials (~/.kaggle/kaggle.json), or pass --synthetic "
            "(data.synthetic=true) for the offline stand-in."
        ) from err
    files = hash_tree(target, ["*"])
    record = FetchRecord(handle, None, target, files, datetime.now(UTC).isoformat())
    write_manifest(record)
    log.info("Hashed %d file(s) of %s; digest %s", len(files), handle, record.digest()[:12])
    return record
