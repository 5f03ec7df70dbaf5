"""Decoded cache on a real-sized dataset: build time, one epoch of the data path, peak memory.

    python benchmarks/cache_memory.py data/bench_validate --image-size 160
    python benchmarks/cache_memory.py data/bench_validate --split grouped   # + grouping time

(``benchmarks/validate_speed.py`` generates 40,000 synthetic images into
``data/bench_validate``.)  Builds the cache (or reuses it), then reads one epoch of
the training split through the loader and the batch augmentation, and prints the
seconds of each and the peak resident memory of this process and its workers.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time

DATA_CONFIG = {"interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root")
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--cache-dir", default="data/cache")
    p.add_argument("--split", choices=["random", "grouped"], default="random",
                   help="grouped: also time grouping the images (cached in --cache-dir afterwards)")
    a = p.parse_args()
    from crack_lightning.data import CrackDataModule

    config = {**DATA_CONFIG, "input_size": (3, a.image_size, a.image_size)}
    with tempfile.TemporaryDirectory() as tmp:
        dm = CrackDataModule(a.root, config, split={"strategy": a.split, "file": f"{tmp}/splits.csv"},
                             cache={"dir": a.cache_dir, "enabled": True}, loader={"batch_size": a.batch_size})
        t0 = time.perf_counter()
        dm.prepare_data()
        dm.setup("fit")
        t1 = time.perf_counter()
        augment = dm.batch_transforms["train"]
        n = 0
        for images, labels in dm.train_dataloader():
            augment(images.permute(0, 3, 1, 2))
            n += len(labels)
        t2 = time.perf_counter()
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    images = len(dm.splits["train"]) + len(dm.splits["val"]) + len(dm.splits["test"])
    print(f"{images} images at {a.image_size} px: {a.split} split + cache ready in {t1 - t0:.1f} s; one training epoch "
          f"({n} images, batch augmentation) in {t2 - t1:.1f} s = {n / (t2 - t1):.0f} images/s; "
          f"peak RSS {peak / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
