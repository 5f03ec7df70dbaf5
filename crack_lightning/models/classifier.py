"""The LightningModule: a timm backbone, our own dropout + linear head, binary metrics."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import lightning as L
import timm
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
)

def _binary_metrics() -> MetricCollection:
    # label 1 is the crack class (see crack_lightning.data.dataset), so precision,
    # recall and F1 are those of cracks
    return MetricCollection(
        {
            "acc": BinaryAccuracy(),
            "precision": BinaryPrecision(),
            "recall": BinaryRecall(),
            "f1": BinaryF1Score(),
            "auroc": BinaryAUROC(),
        }
    )


class CrackClassifier(L.LightningModule):
    """Crack / no-crack classifier over any timm backbone.

    Args:
        backbone: a pooled feature extractor from :func:`crack_lightning.backbones.create_backbone`.
        lr: base learning rate of the head; the backbone joins at ``lr * backbone_lr_ratio``
            when :class:`~crack_lightning.callbacks.FreezeUnfreeze` unfreezes it.
        optimizer: partial taking ``(params, lr=...)``, e.g. ``torch.optim.AdamW``.
        scheduler: partial taking the optimizer (and ``total_steps`` / ``steps_per_epoch`` if
            its signature has them), or ``None`` for a constant rate.
        scheduler_interval: ``"step"`` or ``"epoch"``.
        drop_rate: dropout before the linear layer.
        label_smoothing: cross-entropy label smoothing.
        channels_last: NHWC memory format for model and input (1.4-1.7x faster for
            MobileNetV2 even on CPU; the usual win on tensor-core GPUs).
    """

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        lr: float = 1e-4,
        scheduler_interval: str = "step",
        drop_rate: float = 0.2,
        label_smoothing: float = 0.0,
        channels_last: bool = True,
        num_classes: int = 2,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(backbone.num_features, num_classes))
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # ("train" cannot be a ModuleDict key: it would shadow nn.Module.train)
        self.train_metrics = _binary_metrics().clone(prefix="train/")
        self.val_metrics = _binary_metrics().clone(prefix="val/")
        self.test_metrics = _binary_metrics().clone(prefix="test/")
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.to(memory_format=torch.channels_last)
        # Filled in by the task so checkpoints carry what predict/export need.
        self.class_names: list[str] = []
        self.run_config: dict | None = None

    @property
    def data_config(self) -> dict:
        """The backbone's timm data config: input size, interpolation, mean, std."""
        return timm.data.resolve_data_config({}, model=self.backbone)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if getattr(datamodule, "class_names", None):
            self.class_names = list(datamodule.class_names)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.contiguous(memory_format=self.memory_format)
        if self.backbone_frozen():
            # Frozen: no autograd bookkeeping at all, a frozen epoch costs a forward pass.
            with torch.no_grad():
                features = self.backbone(images)
        else:
            features = self.backbone(images)
        return self.head(features)

    def backbone_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    def _step(self, batch, stage: str) -> dict[str, torch.Tensor]:
        images, targets = batch
        logits = self(images)
        loss = self.criterion(logits, targets)
        probs = logits.detach().float().softmax(dim=-1)[:, 1]
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(probs, targets)
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True, batch_size=len(targets))
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val")
        return {"loss": loss, "probs": probs, "targets": targets}

    def training_step(self, batch, batch_idx: int):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int):
        return self._step(batch, "val")

    def test_step(self, batch, batch_idx: int):
        return self._step(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(images).float().softmax(dim=-1)[:, 1]

    def configure_optimizers(self):
        # Only what is trainable now: a frozen backbone joins later as its own group.
        # Named groups give stable LearningRateMonitor tags (lr-AdamW/head, .../backbone).
        groups = [{"params": [p for p in self.head.parameters() if p.requires_grad], "name": "head"}]
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        if backbone:
            groups.append({"params": backbone, "name": "backbone"})
        optimizer = self.optimizer_factory(groups, lr=self.hparams.lr)
        if self.scheduler_factory is None:
            return optimizer
        kwargs = {}
        accepted = inspect.signature(self.scheduler_factory).parameters
        if "total_steps" in accepted or "steps_per_epoch" in accepted:
            total = int(self.trainer.estimated_stepping_batches)
            kwargs = dict(total_steps=total, steps_per_epoch=max(1, total // max(1, self.trainer.max_epochs or 1)))
        scheduler = self.scheduler_factory(optimizer, **kwargs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["crack_lightning"] = {"class_names": self.class_names, "config": self.run_config}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        extra = checkpoint.get("crack_lightning", {})
        self.class_names = extra.get("class_names", self.class_names)
