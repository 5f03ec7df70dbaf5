"""How much does a random split leak on patches cut from shared photos, and a grouped one?

    python benchmarks/split_leak.py --per-class 2000      # data/bench_scenes, generated once

Generates the synthetic ``scenes`` layout (patches cut side by side from wall
photos, ground truth in ``synthetic_scenes.csv``), makes a random and a grouped
80/10/10 split with the data module, and prints for each split's test set the
share of patches whose direct neighbour, or any patch of whose photo, is in train.
"""
from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from crack_lightning.data import CrackDataModule
from crack_lightning.data.synthetic.scenes import split_leak
from crack_lightning.data.synthetic.generate import generate

DATA_CONFIG = {"input_size": (3, 227, 227), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=2000)
    p.add_argument("--tiles", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", default="data/bench_scenes")
    a = p.parse_args()
    root = Path(a.root)
    generate(root, per_class=a.per_class, seed=a.seed, layout="scenes", tiles=a.tiles, workers=2)
    print(f"{2 * a.per_class} patches from {len({r['scene'] for r in csv.DictReader((root / 'synthetic_scenes.csv').open())})} "
          f"photos of {a.tiles}x{a.tiles} patches ({root})")
    print(f"{'split':8} {'test imgs':>9} {'crack share train/val/test':>28} {'neighbour in train':>19} "
          f"{'photo in train':>15} {'seconds':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in ("random", "grouped"):
            split_file = Path(tmp) / strategy / "splits.csv"
            t0 = time.perf_counter()
            dm = CrackDataModule(str(root), DATA_CONFIG, split={"strategy": strategy, "file": str(split_file)},
                                 loader={"num_workers": 0})
            dm.prepare_data()
            seconds = time.perf_counter() - t0
            dm.setup("fit")
            with split_file.open(newline="") as f:
                leak = split_leak(root, {r["path"]: r["split"] for r in csv.DictReader(f)})
            shares = "/".join(f"{sum(s.label for s in v) / len(v):.3f}" for v in dm.splits.values())
            print(f"{strategy:8} {leak['images']:9d} {shares:>28} {leak['neighbour_in_train']:19.1%} "
                  f"{leak['photo_in_train']:15.1%} {seconds:8.1f}")


if __name__ == "__main__":
    main()
