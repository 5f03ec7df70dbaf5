"""`make bench-finetune`: a whole fine-tune through the real task, timed phase by phase.

    python benchmarks/finetune.py         # CPU check: 1,000 synthetic images at 96 px, 3 epochs
    python benchmarks/finetune.py --per-class 20000 --image-size 224 --batch-size 256 --epochs 10
                                          # the GPU target: 32k/4k/4k images, <= 90 s for the 10 epochs

What runs is ``crack_lightning.train.train`` -- the function ``python train.py`` calls --
with MobileNetV2 (``pretrained=false``: no download), freeze-then-unfreeze (the backbone
joins at epoch 2), a random 80/10/10 split of the synthetic dataset, the decoded cache,
every epoch's validation, checkpoints, TensorBoard and CSV logs, then the operating point,
the test and the figures.  Early stopping is off so every epoch runs.  Precision, channels_last
and ``cudnn.benchmark`` are the trainer config's own ``auto`` choices (bf16 autocast on CUDA).

A timing callback records, with CUDA synchronised at each mark:

* **prepare**: the task's start to the first training step's start -- image check, split,
  decoded-cache build on a first run (reused after), model set-up, sanity validation;
* **fit**: every epoch, training and validation, from the first training step to the end of
  fitting -- the figure the GPU target is about;
* **after fit**: operating point (one more validation), test, figures, report.

Training images/s per epoch come from the run's own ``train/images_per_sec`` (the epoch's
images over its training time, validation excluded).  A table is printed and appended to
BENCHMARKS.md with the machine, versions and command.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from records import append_record
from crack_lightning.data.synthetic.generate import generate
from crack_lightning.train import train
from crack_lightning.trainer import resolve_precision

CONF = Path(__file__).resolve().parents[1] / "conf"


def _now() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


class PhaseTimer(L.Callback):
    """Writes ``phases.json`` to ``output_dir``: when fitting's first training step started,
    when fitting ended, and the seconds spent in validation during fitting."""

    def __init__(self, output_dir: str):
        self.file = Path(output_dir) / "phases.json"
        self.marks: dict[str, float] = {"validation_s": 0.0}
        self._val_start = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.marks.setdefault("first_step", _now())

    def on_validation_start(self, trainer, pl_module):
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._val_start = _now()

    def on_validation_end(self, trainer, pl_module):
        if self._val_start is not None:
            self.marks["validation_s"] += _now() - self._val_start
            self._val_start = None

    def on_fit_end(self, trainer, pl_module):
        self.marks["fit_end"] = _now()
        if trainer.is_global_zero:
            self.file.write_text(json.dumps(self.marks))


def config(args, root: Path, work: Path, run_dir: Path):
    overrides = [
        "backbone=mobilenetv2", "backbone.pretrained=false", "finetune=freeze_unfreeze",
        f"data.root={root}", "data.split.strategy=random", f"data.image_size={args.image_size}",
        f"data.loader.batch_size={args.batch_size}", f"data.loader.eval_batch_size={2 * args.batch_size}",
        f"trainer.max_epochs={args.epochs}", f"trainer.min_epochs={args.epochs}", f"trainer.compile={args.compile}",
        "callbacks.early_stopping=null", "callbacks.progress_bar.live=false",  # null: Lightning would add its own bar
        f"paths.data_dir={work / 'data'}", f"paths.cache_dir={work / 'cache'}",
        f"paths.log_dir={run_dir / 'logs'}", f"paths.output_dir={run_dir}",
        *args.overrides,
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.callbacks.phase_timer = {"_target_": f"{__name__}.PhaseTimer", "output_dir": "${paths.output_dir}"}
    return cfg


def epoch_rates(run: Path) -> list[float]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return [float(r["train/images_per_sec"]) for r in csv.DictReader(f) if r.get("train/images_per_sec")]


def main() -> None:
    p = argparse.ArgumentParser(description="Time a whole MobileNetV2 fine-tune through the real task.")
    p.add_argument("--per-class", type=int, default=500, help="synthetic 227x227 images per class")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3, help="the backbone is frozen for the first 2")
    p.add_argument("--compile", action="store_true", help="trainer.compile=true")
    p.add_argument("--out", default="BENCHMARKS.md")
    p.add_argument("--work", default="data/bench", help="synthetic data and caches (kept: a rerun reuses the cache)")
    p.add_argument("overrides", nargs="*", help="more train.py overrides, e.g. trainer.precision=16-mixed")
    args = p.parse_args()
    if args.epochs <= 2:
        p.error("--epochs must exceed 2: the backbone joins at epoch 2 (finetune=freeze_unfreeze)")
    work = Path(args.work).resolve()
    root = work / f"synthetic-{args.per_class}"
    generate(root, per_class=args.per_class, seed=0, workers=max(1, len(os.sched_getaffinity(0))))
    run_dir = Path(tempfile.mkdtemp(prefix="finetune-", dir=work))
    cfg = config(args, root, work, run_dir)

    start = _now()
    train(cfg)
    end = _now()
    marks = json.loads((run_dir / "phases.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    splits = {"train": 0, "val": 0, "test": 0}
    with open(run_dir / "splits.csv", newline="") as f:
        for row in csv.DictReader(f):
            splits[row["split"]] += 1
    rates = epoch_rates(run_dir)
    frozen, unfrozen = rates[:2], rates[2:]
    fit_s = marks["fit_end"] - marks["first_step"]
    row = {
        "images train/val/test": "/".join(str(splits[k]) for k in ("train", "val", "test")),
        "epochs": str(len(rates)),
        "prepare s": f"{marks['first_step'] - start:.1f}",
        "fit s (validation incl.)": f"{fit_s:.1f}",
        "of which validation s": f"{marks['validation_s']:.1f}",
        "fit img/s (train images x epochs / fit s)": f"{splits['train'] * len(rates) / fit_s:.1f}",
        "train img/s frozen (median epoch)": f"{statistics.median(frozen):.1f}",
        "train img/s unfrozen (median epoch)": f"{statistics.median(unfrozen):.1f}" if unfrozen else "—",
        "after fit s": f"{end - marks['fit_end']:.1f}",
        "total s": f"{end - start:.1f}",
        "test/acc": f"{metrics.get('test/acc', float('nan')):.3f}",
    }
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    settings = (f"MobileNetV2 (pretrained=false) at {args.image_size} px, batch {args.batch_size}, "
                f"{len(rates)} epochs (2 frozen), precision {precision}{', compiled' if args.compile else ''}; "
                f"per-epoch training img/s: {', '.join(f'{r:.0f}' for r in rates)}; run folder {run_dir}")
    append_record(args.out, "fine-tune", settings,
                  ["| " + " | ".join(row) + " |", "|" + "---|" * len(row), "| " + " | ".join(row.values()) + " |"])


if __name__ == "__main__":
    main()
