"""`make bench`: training throughput of the framework against a plain PyTorch loop.

    python benchmarks/bench.py                                   # CPU defaults, ~7.5 min here
    python benchmarks/bench.py --image-size 224 --per-class 20000 --batch-size 256 --steps 200   # a GPU box

For each backbone, in one run, side by side, on the synthetic data through the
decoded cache (the default data path):

* **plain**: a hand-written PyTorch loop (run before and after the Trainer; the mean of
  the two: it cancels a drift of the machine's speed, and keeping the faster of two
  against the Trainer's one would favour the loop) -- same model, same data loader and
  batch augmentation, same batch size, optimizer (AdamW) and settings (channels_last,
  AMP on CUDA), the backbone frozen (requires_grad off, eval mode, no_grad forward) or
  not; what it leaves out is the framework's own work: the LR schedule, metrics, logging;
* **trainer**: ``lightning.Trainer.fit`` on the model, data module and fine-tuning
  callback built from the Hydra config exactly as ``train.py`` builds them
  (``finetune=frozen`` / ``finetune=full``), logging on, no validation;
* **model alone**: the plain loop's step on one fixed random batch, no data path at all
  (how ``../shared/reference.md`` measured its CPU ceilings) -- what the hardware gives;
* **loader**: the training loader alone -- batches the host hands over;
* **data**: the data path alone -- loader plus the device step (transfer, gather from a
  resident cache on a GPU, batch augmentation);
* **infer**: evaluation forward passes (no_grad) over the validation loader.

Throughput is the batch size over the median step time after ``--warmup`` steps
(a step from one batch's arrival to the next, data included).  The table is printed and
appended to BENCHMARKS.md with the machine, versions and command.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from records import append_record
from crack_lightning.backbones import stage_modules
from crack_lightning.data.synthetic.generate import generate
from crack_lightning.models.frozen import FrozenBackbone
from crack_lightning.trainer import build_trainer, compile_if_asked

CONF = Path(__file__).resolve().parents[1] / "conf"
PHASES = {"frozen": "frozen", "unfrozen": "full"}  # phase -> finetune config


class Throughput(L.Callback):
    """Marks the start of every training step (data fetch and transfer included)."""

    def __init__(self):
        self.marks: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        _sync()
        self.marks.append(time.perf_counter())


def rate(marks: list[float], warmup: int, batch_size: int) -> float:
    """Images/s from the median step time after ``warmup`` steps: robust to the odd
    slow step (garbage collection, page faults) that a total-time mean is not."""
    steps = [b - a for a, b in zip(marks[warmup:], marks[warmup + 1:])]
    return batch_size / statistics.median(steps)


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build(args, backbone: str, phase: str, root: Path, out: Path):
    """Model, data module, fine-tuning callback and trainer kwargs as train.py makes them."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=False, overrides=[
            f"backbone={backbone}", "backbone.pretrained=false", f"finetune={PHASES[phase]}",
            f"data.root={root}", f"data.image_size={args.image_size}", f"data.loader.batch_size={args.batch_size}",
            f"data.loader.eval_batch_size={args.batch_size}", "data.split.strategy=random",
            f"paths.data_dir={out / 'data'}", f"paths.cache_dir={out / 'cache'}",
            f"paths.output_dir={out / 'run'}", f"paths.log_dir={out / 'logs'}",
            f"trainer.compile={args.compile}", "~callbacks", "~logger",
        ])
    OmegaConf.resolve(cfg)
    model = instantiate(cfg.model)
    dm = instantiate(cfg.data, data_config=model.data_config)
    return cfg, model, dm, instantiate(cfg.finetune)


def to_device(dm, images, labels, device, training: bool):
    """The Trainer's path for a loader batch: transfer, then the data module's device
    step (resident-cache gather on a GPU, batch augmentation or normalisation)."""
    batch = (images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
    return dm.device_batch(batch, training=training)


def _batches(loader):
    """Batches of ``loader`` epoch after epoch (the caller stops)."""
    while True:
        yield from loader


def set_phase(model, frozen: bool, stages: int | None = None) -> None:
    """The plain loop's phase: the backbone frozen (requires_grad off, eval mode: BatchNorm
    statistics fixed) or trainable; ``stages``: only its last stages train, their BatchNorm
    kept frozen in eval mode (as Keras' ``base(x, training=False)`` keeps it)."""
    model.train()
    model.frozen_backbone = FrozenBackbone("eager")  # plain: the module itself, no optimised copy
    model.backbone.requires_grad_(not (frozen or stages))
    if frozen or stages:
        model.backbone.eval()
    if stages and not frozen:
        for module in (m for stage in stage_modules(model.backbone)[-stages:] for m in stage):
            if not isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.requires_grad_(True)


def train_step(model, optimizer, images, labels, amp: bool) -> None:
    """One step of the plain loop: forward (bf16 autocast on CUDA), backward, AdamW."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _plain_optimizer(model):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)


def plain_loop(args, model, dm, frozen: bool) -> float:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    set_phase(model, frozen)
    optimizer = _plain_optimizer(model)
    marks = []
    for step, (images, labels) in enumerate(_batches(dm.train_dataloader())):
        _sync()
        marks.append(time.perf_counter())
        if step > args.warmup + args.steps:
            break
        images, labels = to_device(dm, images, labels, device, training=True)
        train_step(model, optimizer, images, labels, amp=device.type == "cuda")
    return rate(marks, args.warmup, args.batch_size)


def plain_epochs(model, dm, epochs: int, frozen: bool, stages: int | None = None) -> list[dict]:
    """Whole epochs of the plain loop, each followed by a validation pass (no_grad, eval mode):
    per epoch the training images and the seconds of training and of the whole epoch."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    set_phase(model, frozen, stages)
    optimizer = _plain_optimizer(model)
    timings = []
    for _ in range(epochs):
        _sync()
        start, count = time.perf_counter(), 0
        for images, labels in dm.train_dataloader():
            images, labels = to_device(dm, images, labels, device, training=True)
            train_step(model, optimizer, images, labels, amp=device.type == "cuda")
            count += len(labels)
        _sync()
        trained = time.perf_counter()
        modes = {m: m.training for m in model.modules()}
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            for images, labels in dm.val_dataloader():
                model(to_device(dm, images, labels, device, training=False)[0])
        for m, mode in modes.items():  # back to the phase's modes, as Lightning restores them
            m.training = mode
        _sync()
        timings.append({"images": count, "train_s": trained - start, "epoch_s": time.perf_counter() - start})
    return timings


def model_alone(args, model, frozen: bool) -> float:
    """The plain loop's training step on one fixed random batch: the model's ceiling here."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    set_phase(model, frozen)
    optimizer = _plain_optimizer(model)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 2, (args.batch_size,), device=device)
    marks = []
    for _ in range(args.warmup + args.steps + 1):
        _sync()
        marks.append(time.perf_counter())
        train_step(model, optimizer, images, labels, amp=device.type == "cuda")
    return rate(marks, args.warmup, args.batch_size)


def trainer_fit(args, cfg, model, dm, finetune) -> float:
    timer = Throughput()
    trainer = build_trainer(
        cfg.trainer, callbacks=[finetune, timer], logger=False,
        max_epochs=-1, min_epochs=None, max_steps=args.warmup + args.steps + 2, limit_val_batches=0,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=10)
    compile_if_asked(cfg.trainer, model)
    trainer.fit(model, datamodule=dm)
    return rate(timer.marks, args.warmup, args.batch_size)


def data_path(args, dm, device_step: bool = True) -> float:
    """Training batches per second over an epoch: delivered by the loader alone, or
    (``device_step``) on the device and augmented, ready for the model."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    count, start = 0, None
    for step, (images, labels) in enumerate(dm.train_dataloader()):
        if step == args.warmup:
            _sync()
            start = time.perf_counter()
        if start is not None:
            if device_step:
                to_device(dm, images, labels, device, training=True)
            count += len(labels)
    _sync()
    return count / (time.perf_counter() - start)


@torch.no_grad()
def inference(args, model, dm) -> float:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    count, start = 0, None
    loader = dm.train_dataloader()  # the biggest split, without its augmentation
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for step, (images, labels) in enumerate(_batches(loader)):
            if step == args.warmup:
                _sync()
                start = time.perf_counter()
            if step >= args.warmup + args.steps:
                break
            model(to_device(dm, images, labels, device, training=False)[0])
            if start is not None:
                count += len(labels)
    _sync()
    return count / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description="Framework vs plain-loop training throughput.")
    p.add_argument("--backbones", nargs="+", default=["mobilenetv2", "efficientnet", "custom_cnn"])
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--per-class", type=int, default=300, help="synthetic images per class")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="trainer.compile=true (and the same for plain)")
    p.add_argument("--out", default="BENCHMARKS.md")
    p.add_argument("--work", default="data/bench", help="synthetic data and caches")
    args = p.parse_args()
    work = Path(args.work).resolve()
    root = work / f"synthetic-{args.per_class}"
    generate(root, per_class=args.per_class, seed=0, workers=max(1, len(os.sched_getaffinity(0))))
    rows = []
    for backbone in args.backbones:
        for phase in PHASES:
            L.seed_everything(0, verbose=False)
            cfg, model, dm, finetune = build(args, backbone, phase, root, work)
            dm.prepare_data()
            dm.setup("fit")
            compile_if_asked(cfg.trainer, model)
            plain = plain_loop(args, model, dm, frozen=phase == "frozen")
            cfg, fresh, fresh_dm, finetune = build(args, backbone, phase, root, work)
            fw = trainer_fit(args, cfg, fresh, fresh_dm, finetune)
            # plain again, after: the mean of before/after, so warm-up order and drift favour neither
            plain = (plain + plain_loop(args, model, dm, frozen=phase == "frozen")) / 2
            alone = model_alone(args, model, frozen=phase == "frozen")
            model, dm = fresh, fresh_dm
            frozen = phase == "frozen"
            loader = data_path(args, dm, device_step=False) if frozen else None
            data = data_path(args, dm) if frozen else None
            infer = inference(args, model, dm) if frozen else None
            rows.append((backbone, phase, alone, plain, fw, loader, data, infer))
            print(f"{backbone:12} {phase:9} alone {alone:7.1f}  plain {plain:7.1f}  trainer {fw:7.1f} ({fw / plain:.2f}x)"
                  + (f"  loader {loader:8.1f}  data {data:8.1f}  infer {infer:7.1f}" if frozen else ""), flush=True)
    table = ["| backbone | phase | model alone img/s | plain loop img/s | Trainer img/s | Trainer / plain "
             "| loader img/s | data path img/s | inference img/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for backbone, phase, alone, plain, fw, loader, data, infer in rows:
        table.append(f"| {backbone} | {phase} | {alone:.1f} | {plain:.1f} | {fw:.1f} | {fw / plain:.2f} | "
                     + " | ".join(f"{v:.0f}" if v else "—" for v in (loader, data)) + f" | {f'{infer:.1f}' if infer else '—'} |")
    settings = (f"{args.image_size} px, batch {args.batch_size}, {2 * args.per_class} synthetic images "
                f"(decoded cache), {args.steps} timed steps after {args.warmup}, channels_last, "
                f"{'bf16 autocast' if torch.cuda.is_available() else 'fp32'}{', compiled' if args.compile else ''}")
    append_record(args.out, None, settings, table)


if __name__ == "__main__":
    main()
