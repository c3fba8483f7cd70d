"""Brain parcellations: an offline default built from nilearn's bundled MNI mask, real atlases.

`mni-kmeans` needs no download: nilearn ships the MNI152 template inside its package, and
its brain mask, resampled to the requested grid, is split into `n_parcels` compact parcels by
k-means on voxel coordinates (seeded, labels ordered by centroid, so the same arguments always
give the same atlas). `schaefer` and `harvard-oxford` go through nilearn's fetchers and so
need the internet the first time (they cache under `data_dir`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from modelcycle.data.tables import DataError
from modelcycle.messages import clause

if TYPE_CHECKING:
    import nibabel as nib


@dataclass(frozen=True)
class Parcellation:
    """A label image (0 = background, 1..n = parcels) and the parcels' names."""

    name: str
    labels_img: nib.Nifti1Image
    names: tuple[str, ...]

    @property
    def n_parcels(self) -> int:
        """Number of parcels (graph nodes)."""
        return len(self.names)

    def digest(self) -> str:
        """sha256 of the label data, the grid and the names: part of every cache key."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.labels_img.get_fdata(), dtype=np.int32).tobytes())
        h.update(np.asarray(self.labels_img.affine, dtype=np.float64).tobytes())
        h.update("\n".join(self.names).encode())
        return h.hexdigest()


def brain_mask(resolution_mm: int) -> nib.Nifti1Image:
    """Nilearn's bundled MNI152 brain mask resampled to an isotropic grid (no download)."""
    from nilearn.datasets import load_mni152_brain_mask

    return load_mni152_brain_mask(resolution=resolution_mm)


@cache
def mni_kmeans(n_parcels: int = 32, resolution_mm: int = 8, seed: int = 0) -> Parcellation:
    """The bundled MNI brain mask split into `n_parcels` parcels by k-means on coordinates."""
    import nibabel as nib
    from sklearn.cluster import KMeans

    mask = brain_mask(resolution_mm)
    inside = np.argwhere(mask.get_fdata() > 0)
    if n_parcels < 2 or n_parcels > len(inside) // 4:
        raise DataError(
            f"n_parcels={n_parcels} does not fit a {resolution_mm} mm brain mask of "
            f"{len(inside)} voxels; use 2 to {len(inside) // 4}."
        )
    coords = nib.affines.apply_affine(mask.affine, inside)
    km = KMeans(n_clusters=n_parcels, n_init=4, random_state=seed).fit(coords)
    # Number parcels by their centroids (x, then y, then z) so labels do not depend on k-means
    # internals; 1-based, 0 stays background.
    order = np.lexsort(np.round(km.cluster_centers_, 3).T[::-1])
    rank = np.empty(n_parcels, dtype=int)
    rank[order] = np.arange(1, n_parcels + 1)
    labels = np.zeros(mask.shape, dtype=np.int16)
    labels[tuple(inside.T)] = rank[km.labels_]
    names = tuple(f"parcel{i:03d}" for i in range(1, n_parcels + 1))
    return Parcellation(f"mni-kmeans-{n_parcels}", nib.Nifti1Image(labels, mask.affine), names)


#: The parcel counts the Schaefer 2018 atlas is published in.
SCHAEFER_SIZES = tuple(range(100, 1001, 100))


def _schaefer(n_parcels: int, resolution_mm: int, data_dir: Path | None) -> Parcellation:
    from nilearn.datasets import fetch_atlas_schaefer_2018

    atlas = fetch_atlas_schaefer_2018(
        n_rois=n_parcels, resolution_mm=min(resolution_mm, 2), data_dir=data_dir
    )
    names = tuple(str(n) for n in atlas.labels if str(n) != "Background")
    return Parcellation(f"schaefer-{n_parcels}", _image(atlas.maps), names)


#: Regions of the Harvard-Oxford cortical atlas (cort-maxprob-thr25), its background left out.
HARVARD_OXFORD_REGIONS = 48


def _harvard_oxford(n_parcels: int, resolution_mm: int, data_dir: Path | None) -> Parcellation:
    from nilearn.datasets import fetch_atlas_harvard_oxford

    atlas = fetch_atlas_harvard_oxford("cort-maxprob-thr25-2mm", data_dir=data_dir)
    names = tuple(str(n) for n in atlas.labels if str(n) != "Background")
    return Parcellation("harvard-oxford", _image(atlas.maps), names)


def _image(maps: object) -> nib.Nifti1Image:
    import nibabel as nib

    image = nib.load(maps) if isinstance(maps, str | Path) else maps
    assert isinstance(image, nib.Nifti1Image)
    return image


def _kmeans(n_parcels: int, resolution_mm: int, data_dir: Path | None) -> Parcellation:
    return mni_kmeans(n_parcels, resolution_mm)


ATLASES: dict[str, Callable[[int, int, Path | None], Parcellation]] = {
    "mni-kmeans": _kmeans,
    "schaefer": _schaefer,
    "harvard-oxford": _harvard_oxford,
}


def load_parcellation(
    name: str, n_parcels: int = 32, resolution_mm: int = 8, data_dir: Path | None = None
) -> Parcellation:
    """The named parcellation; `schaefer` and `harvard-oxford` download on first use.

    Raises:
        DataError: An unknown name (the valid ones are listed), or a fetcher that failed
            (offline), with the offline default as the fix.
    """
    if name not in ATLASES:
        raise DataError(f"Unknown atlas {name!r}; choose one of {sorted(ATLASES)}.")
    try:
        return ATLASES[name](n_parcels, resolution_mm, data_dir)
    except (OSError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(
            f"Could not load atlas {name!r}: {clause(err)}. Real atlases download on first use; "
            "offline, use the bundled default (data.atlas=mni-kmeans)."
        ) from err
