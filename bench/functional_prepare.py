"""Preparation speed: parcel series + connectomes, ours vs a plain serial nilearn script.

Writes a synthetic cohort (or uses --data), then times on the same files, one after the other:
a plain serial nilearn loop (the baseline), our preparation with one worker and an empty
cache, with --jobs workers and an empty cache, and a rerun from the cache. Prints subjects
per second and the ratios side by side.

    PYTHONPATH=src python bench/functional_prepare.py --families 20 --qtim-root ../shared/data/qtim
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from modelcycle.data.bids_index import index_rest_runs, pick_runs
from modelcycle.data.connectomes import MaskerSettings, connectomes, prepare_timeseries
from modelcycle.data.parcellations import Parcellation, mni_kmeans
from modelcycle.data.qtim_synthetic import SyntheticSpec, write_synthetic_cohort


def plain_nilearn(paths: list[Path], atlas: Parcellation, settings: MaskerSettings) -> None:
    """What one would write by hand: a masker per run, in a loop, then the connectomes."""
    from nilearn.connectome import ConnectivityMeasure
    from nilearn.maskers import NiftiLabelsMasker
    from sklearn.covariance import LedoitWolf

    series = []
    for path in paths:
        masker = NiftiLabelsMasker(
            labels_img=atlas.labels_img,
            detrend=settings.detrend,
            standardize="zscore_sample",
            low_pass=settings.low_pass,
            high_pass=settings.high_pass,
            t_r=2.1,
        )
        series.append(masker.fit_transform(str(path)))
    measure = ConnectivityMeasure(
        cov_estimator=LedoitWolf(store_precision=False), kind="correlation"
    )
    measure.fit_transform(series)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--families", type=int, default=20)
    parser.add_argument("--volumes", type=int, default=150)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--qtim-root", type=Path, default=Path("../shared/data/qtim"))
    parser.add_argument("--data", type=Path, default=None, help="an existing BIDS root")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or Path(tmp) / "bids"
        if args.data is None:
            spec = SyntheticSpec(n_families=args.families, n_volumes=args.volumes)
            write_synthetic_cohort(root, args.qtim_root, spec)
        runs = pick_runs(index_rest_runs(root))
        atlas, settings = mni_kmeans(32, 8), MaskerSettings()
        n = len(runs)

        def ours(jobs: int, cache: Path) -> None:
            prepared = prepare_timeseries(runs, atlas, settings, cache, jobs, progress=False)
            connectomes(prepared.timeseries)

        paths = [r.bold for r in runs.values()]
        plain_nilearn(paths[:1], atlas, settings)  # imports and first-call costs, untimed
        baseline = timed(lambda: plain_nilearn(paths, atlas, settings))
        serial = timed(lambda: ours(1, Path(tmp) / "cache-serial"))
        parallel = timed(lambda: ours(args.jobs, Path(tmp) / "cache-parallel"))
        cached = timed(lambda: ours(args.jobs, Path(tmp) / "cache-parallel"))
    rows = [
        ("ours, 1 worker, empty cache ÷ plain nilearn", serial, baseline),
        (f"ours, {args.jobs} workers, empty cache ÷ plain nilearn", parallel, baseline),
        (f"parallel speedup ({args.jobs} workers ÷ 1)", parallel, serial),
        ("cached rerun ÷ plain nilearn", cached, baseline),
    ]
    print(f"{n} subjects; subjects/s = {n} / wall time; ratio = baseline time ÷ ours\n")
    print("| measurement | ours (subj/s) | baseline (subj/s) | speed ratio |")
    print("|---|---:|---:|---:|")
    for label, ours_s, base_s in rows:
        print(f"| {label} | {n / ours_s:.1f} | {n / base_s:.1f} | {base_s / ours_s:.2f} |")


if __name__ == "__main__":
    main()
