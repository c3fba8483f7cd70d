"""A content-addressed store of computed arrays: one `.npy` file per key, written atomically.

Keys are sha256 digests of what went in (the input files' bytes and every setting that shapes
the result), so an entry is never stale: other inputs give another key. Delete the folder to
reclaim the space; nothing else refers to it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from modelcycle.data.atomic import replacing

log = logging.getLogger(__name__)


def save_array(path: Path, array: np.ndarray) -> None:
    """Write then rename, so that an entry is never half written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        np.save(tmp, array)


def array_key(*parts: str) -> str:
    """The cache key of an array made from these parts (input digests, settings, a version)."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def cached_array(
    cache_dir: Path | None, key: str, compute: Callable[[], np.ndarray], what: str
) -> np.ndarray:
    """The array stored under `key` in `cache_dir`, else `compute()`'s, stored there.

    Args:
        cache_dir: The store; None computes every time.
        key: The array's content address (`array_key`).
        compute: Makes the array when it is not stored.
        what: What the array is, for the log ("rice images at 32 px").
    """
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"{key}.npy"
    if path.is_file():
        try:
            array = np.load(path)
        except (OSError, ValueError) as err:  # truncated by a full disk, or not an array
            log.warning(
                "Cache entry %s of %s is unreadable (%s); computing it again", path, what, err
            )
        else:
            log.info("%s: from the cache (%s)", what, path.name[:12])
            return array
    array = compute()
    save_array(path, array)
    log.info("%s: computed and cached in %s", what, cache_dir)
    return array
