"""What the decoded-image cache saves when an image dataset is read again.

Every run of an image or segmentation experiment reads its dataset: the files' bytes (their
sha256 is the data hash), then each JPEG or PNG decoded and resized. With `data.cache_dir`
set (the experiments' default) the decoded arrays are kept by content address, and a later
read hashes the bytes but decodes nothing. This bench writes a stand-in, then times, in
alternating rounds in this process,

- a cold read in one thread: `cache_dir=None`, every file decoded one after another (what
  each run did before the cache and the reading threads);
- a cold read: `cache_dir=None`, every file decoded, a thread per core;
- a warm read: the cache filled by one earlier read.

It prints the medians and the ratios to the one-thread cold read, with their range over the
rounds.

    python bench/image_cache.py [--dataset rice|bcss] [--images 5000] [--size 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import modelcycle.data.image_set as image_set
from modelcycle.data.bcss import BCSSSource
from modelcycle.data.image_set import ImageSource
from modelcycle.data.rice import RiceSource


def source(dataset: str, root: Path, images: int, size: int, cache: Path | None) -> ImageSource:
    if dataset == "rice":
        return RiceSource(
            download_dir=root,
            synthetic=True,
            image_size=size,
            per_class_synthetic=images // 5,
            cache_dir=cache,
        )
    slides = max(2, images // 40)
    return BCSSSource(
        download_dir=root,
        synthetic=True,
        image_size=size,
        synthetic_slides=slides,
        synthetic_tiles=40,
        cache_dir=cache,
    )


def timed(make: ImageSource, threads: int | None = None) -> float:
    image_set.READ_THREADS = threads
    try:
        start = time.perf_counter()
        make.load()
        return time.perf_counter() - start
    finally:
        image_set.READ_THREADS = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["rice", "bcss"], default="rice")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "data", Path(tmp) / "cache"
        print(f"writing the {args.dataset} stand-in ({args.images} images) ...", flush=True)
        n = len(source(args.dataset, root, args.images, args.size, cache).load())  # fills it
        times: dict[str, list[float]] = {"cold, one thread": [], "cold": [], "warm": []}
        for r in range(args.rounds):
            uncached = source(args.dataset, root, args.images, args.size, None)
            times["cold, one thread"].append(timed(uncached, threads=1))
            times["cold"].append(timed(uncached))
            times["warm"].append(timed(source(args.dataset, root, args.images, args.size, cache)))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
        base = times["cold, one thread"]
        print(f"{args.dataset}, {n} images read at {args.size} px:")
        for name, values in times.items():
            ratios = [v / b for v, b in zip(values, base, strict=True)]
            print(
                f"  {name:<17} {statistics.median(values):6.2f} s   ÷ cold, one thread "
                f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
            )


if __name__ == "__main__":
    main()
