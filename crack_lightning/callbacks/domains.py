"""What the test split says beyond one number per metric, from the per-image results:
:class:`DomainMetrics` (every metric per domain) and :class:`ConfidenceIntervals` (95 %
intervals). Both read :class:`ImageResults`, the test epoch's per-image results gathered
from every rank with their dataset index."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_average_precision,
    binary_f1_score,
    binary_precision,
    binary_recall,
    multiclass_accuracy,
    multiclass_f1_score,
)

from crack_lightning.trainer.distributed import gather_uneven
from crack_lightning.utils.files import write_atomic

PREFIX = "test/domain"  # test/domain/<domain>/<metric>: apart from test/<metric>/<class>


@dataclass
class ImageResults:
    """Per test image, in the order of the data module's test split: crack probability, label, argmax,
    logits (before temperature scaling)."""

    probs: torch.Tensor
    targets: torch.Tensor
    predicted: torch.Tensor
    logits: torch.Tensor


class PerImageTest(L.Callback):
    """Collects the test epoch's per-image outputs; :meth:`evaluate` gets them, gathered and put in
    dataset order (under DDP each rank's loader sampler says which images it scored)."""

    def __init__(self, output_dir: str | None = None):
        self.output_dir = Path(output_dir) if output_dir else None
        self._parts: list[tuple[torch.Tensor, ...]] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._parts = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if outputs is not None:
            logits = outputs["logits"].float()
            self._parts.append((outputs["probs"].float(), outputs["targets"], logits.argmax(dim=1), logits))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._parts:
            return
        order = torch.tensor(list(iter(trainer.test_dataloaders.sampler)), dtype=torch.long)  # this rank's indices
        parts = [torch.cat(p) for p in zip(*self._parts)]
        device = pl_module.device
        index, *parts = (gather_uneven(t.to(device), device).cpu() for t in (order[:len(parts[1])], *parts))
        rank = torch.argsort(index)
        self.evaluate(trainer, pl_module, ImageResults(*(t[rank] for t in parts)))

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, images: ImageResults) -> None:
        raise NotImplementedError

    def write(self, trainer: L.Trainer, name: str, table: dict) -> None:
        if trainer.is_global_zero and self.output_dir is not None:
            write_atomic(self.output_dir / name, json.dumps(table, indent=2) + "\n")


class DomainMetrics(PerImageTest):
    """After the test epoch, every test metric again for each domain of the test split
    (logged as ``test/domain/<domain>/<metric>``, so it lands in ``metrics.json`` and
    TensorBoard) and ``domain_metrics.json`` in ``output_dir``. Nothing when no image has a
    domain: a model can hold 0.95 recall overall and 0.6 on one surface."""

    def evaluate(self, trainer, pl_module, images: ImageResults) -> None:
        domains = [s.domain for s in getattr(trainer.datamodule, "splits", {}).get("test", [])]
        if not any(d is not None for d in domains):
            return
        table = {}
        for domain in sorted({d for d in domains if d is not None}):
            keep = torch.tensor([d == domain for d in domains])
            table[domain] = domain_metrics(pl_module, images.probs[keep], images.targets[keep], images.predicted[keep])
        for domain, values in table.items():
            for key, value in values.items():
                pl_module.log(f"{PREFIX}/{domain}/{key}", float(value), sync_dist=False)  # the same on every rank
        self.write(trainer, "domain_metrics.json", table)


def domain_metrics(pl_module, probs: torch.Tensor, targets: torch.Tensor, predicted: torch.Tensor) -> dict[str, float]:
    """The headline test metrics of one domain's images: crack vs the rest at 0.5 and at the
    operating threshold, missed cracks, and with more than two classes top-1 accuracy and macro-F1."""
    cracks = pl_module.is_crack(targets)
    threshold = float(pl_module.threshold)
    both = bool(cracks.any() and (cracks == 0).any())  # AUROC / AP need both
    num_classes = pl_module.hparams.num_classes
    out = {"images": len(targets), "cracks": int(cracks.sum())}
    if num_classes == 2:
        out["acc"] = float(binary_accuracy(probs, cracks))
    else:
        out["acc"] = float(multiclass_accuracy(predicted, targets, num_classes, average="micro"))
        out["macro_f1"] = float(multiclass_f1_score(predicted, targets, num_classes, average="macro"))
    out.update(
        precision=float(binary_precision(probs, cracks)),
        recall=float(binary_recall(probs, cracks)),
        f1=float(binary_f1_score(probs, cracks)),
        recall_at_threshold=float(binary_recall(probs, cracks, threshold=threshold)),
        precision_at_threshold=float(binary_precision(probs, cracks, threshold=threshold)),
        missed_cracks=int(((cracks == 1) & (probs <= 0.5)).sum()),
        missed_cracks_at_threshold=int(((cracks == 1) & (probs <= threshold)).sum()),
    )
    if both:
        out.update(auroc=float(binary_auroc(probs, cracks)), ap=float(binary_average_precision(probs, cracks)))
    return out
