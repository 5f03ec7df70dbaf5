"""`make bench-peers`: our frozen and fine-tune phases against the seeds' Keras recipe and the plain loop.

    make bench-peers                                          # 1,600 training images, 160 px, batch 32
    make bench-peers ARGS="--train-images 160 --frozen-epochs 1 --finetune-epochs 1"   # a dry run

In one run, on the same synthetic images (one random 80/10/10 split, seed 0), at the same
size and batch, each with validation after every epoch:

* **ours**: ``crack_lightning.train.train`` -- what ``python train.py`` runs -- with
  ``experiment=keras_seed`` (MobileNetV2 from scratch, flip + rotation, Adam 1e-4, dropout
  0.2), the decoded cache, checkpoints and logs, the backbone frozen for ``--frozen-epochs``
  and then its last ``--stages`` stages trained with BatchNorm frozen; ``trainer.frozen_backbone``
  as configured (``auto``: onnxruntime once the frozen phase pays for its export);
* **Keras**: the seeds' TensorFlow recipe (benchmarks/keras_seed.py) in its own virtualenv
  (``--keras-python``; the make target installs benchmarks/peers-requirements.txt there);
* **plain**: the hand-written loop of ``make bench`` (benchmarks/bench.py), whole epochs, run
  before and after ours and averaged epoch by epoch.

The same trainable layers: Keras' ``base.layers[100:]`` of MobileNetV2 starts inside
``block_11`` (its depthwise convolution) and trains the BatchNorm scales in inference mode;
our ``--stages 3`` are timm's last three stages, ``blocks.4`` (Keras' blocks 10-12) to the
head, BatchNorm frozen in eval mode -- a little more backward work than Keras does.

A phase's images/s is its training images over its wall time, validation and one-time
costs (graph tracing, the frozen copy's export) included; the table also gives the median
epoch's training-only rate. Printed and appended to BENCHMARKS.md with the command.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from bench import build, plain_epochs
from records import append_record
from crack_lightning.data.synthetic.generate import generate
from crack_lightning.train import train

HERE = Path(__file__).resolve().parent
CONF = HERE.parent / "conf"
FINE_TUNE_AT = 100  # Keras: base.layers[100:] train (the guide's fine_tune_at)


class EpochTimer(L.Callback):
    """Writes ``epochs.json`` to ``output_dir``: per training epoch its images, the seconds
    to its last training batch and to its end (validation included), and whether an
    optimised frozen copy had been built by then."""

    def __init__(self, output_dir: str):
        self.file = Path(output_dir) / "epochs.json"
        self.epochs: list[dict] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = self._last = time.perf_counter()
        self._images = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._last = time.perf_counter()
        self._images += len(batch[1])

    def on_train_epoch_end(self, trainer, pl_module):  # after the epoch's validation
        frozen = getattr(pl_module, "frozen_backbone", None)
        self.epochs.append({"images": self._images, "train_s": self._last - self._start,
                            "epoch_s": time.perf_counter() - self._start,
                            "frozen_copy": frozen.builds > 0 if frozen is not None else False})

    def on_fit_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            self.file.write_text(json.dumps(self.epochs))


def run_ours(args, root: Path, run_dir: Path) -> list[dict]:
    epochs = args.frozen_epochs + args.finetune_epochs
    overrides = [
        "experiment=keras_seed", "backbone.pretrained=false", f"data.root={root}", "data.split.strategy=random",
        f"data.image_size={args.image_size}", f"data.loader.batch_size={args.batch_size}",
        f"data.loader.eval_batch_size={args.batch_size}", f"trainer.max_epochs={epochs}", f"trainer.min_epochs={epochs}",
        f"finetune.unfreeze_at_epoch={args.frozen_epochs}", f"finetune.unfreeze_stages={args.stages}",
        "finetune.train_bn=false", "callbacks.early_stopping=null", "callbacks.progress_bar.live=false",
        f"paths.data_dir={args.work / 'data'}", f"paths.cache_dir={run_dir.parent / 'cache'}",  # the plain loop's
        f"paths.log_dir={run_dir / 'logs'}", f"paths.output_dir={run_dir}", *args.overrides,
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.callbacks.epoch_timer = {"_target_": f"{__name__}.EpochTimer", "output_dir": "${paths.output_dir}"}
    train(cfg)
    return json.loads((run_dir / "epochs.json").read_text())


def run_keras(args, run_dir: Path, cracks: set[str]) -> dict:
    python = Path(args.keras_python)
    if not python.exists():
        sys.exit(f"--keras-python {python}: no such interpreter; `make bench-peers` installs TensorFlow there.")
    with open(run_dir / "splits.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    job = {"image_size": args.image_size, "batch_size": args.batch_size, "frozen_epochs": args.frozen_epochs,
           "finetune_epochs": args.finetune_epochs, "fine_tune_at": FINE_TUNE_AT, "lr": 1e-4}
    for split in ("train", "val"):  # our split's images (paths relative to the root), label 1: a crack class
        job[split] = [[str(args.root / r["path"]), int(r["label"] in cracks)] for r in rows if r["split"] == split]
    (run_dir / "keras_job.json").write_text(json.dumps(job))
    done = subprocess.run([str(python), str(HERE / "keras_seed.py"), str(run_dir / "keras_job.json")],
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"keras_seed.py failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_plain(args, run_dir: Path) -> tuple[list[dict], list[dict], set[str]]:
    """The plain loop's frozen and fine-tune epochs, and the names of the crack classes."""
    torch.manual_seed(0)
    # bench.build's run folder is <out>/run, ours' too: one splits.csv for both
    cfg, model, dm, _ = build(args, "mobilenetv2", "frozen", args.root, run_dir.parent)
    dm.prepare_data()
    dm.setup("fit")
    frozen = plain_epochs(model, dm, args.frozen_epochs, frozen=True)
    tuned = plain_epochs(model, dm, args.finetune_epochs, frozen=False, stages=args.stages)
    return frozen, tuned, {dm.class_names[k] for k in dm.positive}


def mean_epochs(a: list[dict], b: list[dict]) -> list[dict]:
    """Epoch by epoch, the mean seconds of two runs of the plain loop."""
    return [{k: (x[k] + y[k]) / 2 for k in x} for x, y in zip(a, b)]


def phase_rate(epochs: list[dict], images: int | None = None) -> float:
    """Training images over the phase's wall time (validation and one-time costs included)."""
    return sum(e.get("images", images) for e in epochs) / sum(e["epoch_s"] for e in epochs)


def train_rate(epochs: list[dict], images: int | None = None) -> float:
    return statistics.median(e.get("images", images) / e["train_s"] for e in epochs)


def main() -> None:
    p = argparse.ArgumentParser(description="Ours vs the seeds' Keras recipe vs the plain loop, frozen and fine-tune.")
    p.add_argument("--train-images", type=int, default=1600, help="training images (80 %% of the synthetic set)")
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--frozen-epochs", type=int, default=3)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--stages", type=int, default=3, help="timm stages trained in the fine-tune (3 ~ Keras' layers >= 100)")
    p.add_argument("--keras-python", default="data/bench/peers-venv/bin/python")
    p.add_argument("--out", default="BENCHMARKS.md")
    p.add_argument("--work", default="data/bench", help="synthetic data, caches and the run folder")
    p.add_argument("overrides", nargs="*", help="more train.py overrides for ours, e.g. trainer.frozen_backbone=eager")
    args = p.parse_args()
    args.compile = False  # bench.build's setting
    args.work = Path(args.work).resolve()
    per_class = math.ceil(args.train_images / 0.8 / 2)
    args.root = args.work / f"synthetic-{per_class}"
    generate(args.root, per_class=per_class, seed=0, workers=max(1, len(os.sched_getaffinity(0))))
    run_dir = args.work / f"peers-{time.strftime('%Y%m%d-%H%M%S')}" / "run"
    run_dir.mkdir(parents=True)

    # the plain loop before and after ours, averaged (as make bench does): warm kernel caches and a
    # drift of the machine's speed favour neither. Its first run writes the split ours then reuses.
    *first, _ = run_plain(args, run_dir)
    ours = run_ours(args, args.root, run_dir)
    *second, cracks = run_plain(args, run_dir)
    plain = [mean_epochs(a, b) for a, b in zip(first, second)]
    keras = run_keras(args, run_dir, cracks)
    F = args.frozen_epochs
    n = keras["images"]
    rates = {
        "ours": (phase_rate(ours[:F]), phase_rate(ours[F:]), train_rate(ours[:F]), train_rate(ours[F:])),
        f"Keras (TF {keras['tensorflow']})": (phase_rate(keras["frozen"], n), phase_rate(keras["finetune"], n),
                                              train_rate(keras["frozen"], n), train_rate(keras["finetune"], n)),
        "plain loop": tuple(f(phase) for f in (phase_rate, train_rate) for phase in plain),
    }
    mine, tf_, loop = rates.values()
    table = ["| run | frozen img/s (phase, val incl.) | fine-tune img/s (phase, val incl.) "
             "| frozen train-only (median epoch) | fine-tune train-only (median epoch) |", "|---|---|---|---|---|"]
    table += [f"| {name} | " + " | ".join(f"{v:.1f}" for v in r) + " |" for name, r in rates.items()]
    for name, other in (("ours / Keras", tf_), ("ours / plain loop", loop)):
        table.append(f"| **{name}** | " + " | ".join(f"{a / b:.2f}x" for a, b in zip(mine, other)) + " |")
    settings = (f"MobileNetV2 (from scratch) at {args.image_size} px, batch {args.batch_size}, {n} training / "
                f"{len(json.loads((run_dir / 'keras_job.json').read_text())['val'])} validation synthetic images, "
                f"{F} frozen + {args.finetune_epochs} fine-tune epochs (ours and plain: last {args.stages} timm stages, "
                f"BatchNorm frozen; Keras: layers >= {FINE_TUNE_AT} from {keras['first_trainable_layer']}, "
                f"{keras['base_trainable_params']:,} base parameters), flip + rotation, validation every epoch; "
                f"targets: frozen >= 1.3x Keras, fine-tune >= 1.0x Keras and >= 0.95x plain; "
                f"ours' frozen epochs on {'the onnxruntime copy' if ours[F - 1]['frozen_copy'] else 'the eager backbone'}; "
                f"overrides {' '.join(args.overrides) or 'none'}; run folder {run_dir}")
    append_record(args.out, "peers: ours vs Keras seed vs plain loop", settings, table)


if __name__ == "__main__":
    main()
