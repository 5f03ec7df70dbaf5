"""The LightningModule: a timm backbone and our own dropout + linear head, trained; the crack and
per-class metrics and the operating point are :class:`~crack_lightning.models.scoring.CrackScorer`'s."""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Any, Callable

import timm
from lightning.pytorch.utilities import rank_zero_warn
import torch
from torch import nn

from crack_lightning import CrackLightningError
from crack_lightning.model_card import SECTION, ModelCard
from crack_lightning.models.frozen import FrozenBackbone
from crack_lightning.models.scoring import CrackScorer, positive_labels

class NonFiniteLossError(CrackLightningError):
    """The training loss became NaN or infinite (see ``on_nonfinite_loss``)."""


def _class_weights(setting, num_classes: int) -> list[float] | None:
    """``model.class_weights`` as weights, or None ("none"; "auto": set when training starts)."""
    if setting is None or (isinstance(setting, str) and setting in ("none", "auto")):
        return None
    try:
        values = [] if isinstance(setting, str) else list(setting)  # Hydra gives a ListConfig
    except TypeError:  # a single number
        values = []
    if len(values) != num_classes or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                                             for v in values):
        raise CrackLightningError(f"model.class_weights={setting}: choose none, auto or {num_classes} positive "
                                  f"weights, one per class in label order ([no crack, crack] for two), e.g. "
                                  f"{[1.0] * (num_classes - 1) + [5.0]}.")
    return [float(v) for v in values]


class CrackClassifier(CrackScorer):
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
        class_weights: the cross-entropy's class weights: ``"none"``, ``"auto"`` (inverse class
            frequency of the training split, handed over when training starts by
            :class:`~crack_lightning.callbacks.model_card.ClassWeightsFromData`) or one weight
            per class, ``[no crack, crack]``.
        num_classes, class_names, positive_classes: the classes, in label order, and the labels
            of the crack classes (default ``[1]`` of two); train.py takes them from the data
            (:mod:`crack_lightning.data.labelled`) and the checkpoint's config keeps them.
        on_nonfinite_loss: a NaN or infinite training loss either ``"stop"``s the run
            (:class:`NonFiniteLossError`, before the bad batch touches the weights, so the
            last checkpoint stays the last good one) or is ``"skip"``ped with a warning
            (single-process runs: under DDP every rank must step together).
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
        on_nonfinite_loss: str = "stop",
        class_weights: str | list[float] = "none",
        class_names: list[str] | None = None,
        positive_classes: list[int] | None = None,
    ):
        if on_nonfinite_loss not in ("stop", "skip"):
            raise CrackLightningError(f"model.on_nonfinite_loss={on_nonfinite_loss}: choose stop or skip.")
        weights = _class_weights(class_weights, num_classes)
        # plain lists in the saved hyperparameters (Hydra hands ListConfigs; checkpoints load weights_only)
        class_names = [str(c) for c in class_names] if class_names is not None else None
        positive_classes = [int(k) for k in positive_classes] if positive_classes is not None else None
        super().__init__(num_classes, class_names, positive_labels(num_classes, positive_classes), weights)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(backbone.num_features, num_classes))
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # the frozen phase's optimised copy (trainer.frozen_backbone; a plain attribute, out of the state dict)
        self.frozen_backbone = FrozenBackbone()
        if channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def data_config(self) -> dict:
        """The backbone's timm data config: input size, interpolation, mean, std."""
        return timm.data.resolve_data_config({}, model=self.backbone)

    def set_class_weights(self, weights: list[float]) -> None:
        """The cross-entropy's weight per class (``class_weights: auto`` gets them from the data)."""
        self.class_weight.copy_(torch.as_tensor(weights, dtype=self.class_weight.dtype))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.contiguous(memory_format=self.memory_format)
        frozen = self.backbone_frozen()
        if not frozen and self.frozen_backbone.active:
            self.frozen_backbone.drop()  # unfrozen: the copy's weights are about to move
        if not torch.is_grad_enabled() or frozen:
            # evaluation, or a frozen backbone: no autograd bookkeeping at all (a frozen
            # epoch costs a forward pass): the frozen copy while frozen, else the
            # compiled backbone if compile=inference
            with torch.no_grad():
                without_grad = self._backbone_without_grad()
                features = self.frozen_backbone(self.backbone, images, without_grad) if frozen else None
                if features is None:
                    features = without_grad(images)
        else:
            features = self.backbone(images)
        return self.head(features)

    def compile_inference(self, **options) -> None:
        """``trainer.compile=inference``: compile the backbone for the calls that need no
        gradient through it -- the frozen phase, validation, test, prediction -- and leave
        training after the unfreeze eager, so no backward graph is compiled (the costly
        one: most of a minute per graph on a 2-core CPU). Kept out of the module tree
        (``__dict__``), so state_dict keys and checkpoints are the eager model's."""
        self.__dict__["_compiled_without_grad"] = torch.compile(self.backbone, **options)

    def _backbone_without_grad(self):
        compiled = self.__dict__.get("_compiled_without_grad")
        return self.backbone if compiled is None else compiled  # (not `or`: modules may define __len__)

    def backbone_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics(self.train_metrics, *self._stage_metrics("fit"))

    def training_step(self, batch, batch_idx: int):
        return self._step(batch, "train", batch_idx)

    def _nonfinite_loss(self, loss: torch.Tensor, batch_idx: int) -> None:
        """A NaN/inf training loss: skip the batch or stop, as model.on_nonfinite_loss says."""
        where = f"epoch {self.current_epoch}, step {self.global_step} (batch {batch_idx})"
        if self.hparams.on_nonfinite_loss == "skip":
            rank_zero_warn(f"train/loss is {float(loss.detach())} at {where}: batch skipped (model.on_nonfinite_loss=skip).")
            return None  # Lightning skips backward and the optimizer step
        raise NonFiniteLossError(
            f"train/loss is {float(loss.detach())} at {where}; stopped before it reached the weights, "
            f"so checkpoints/last.ckpt is the last good state. Lower model.lr, set trainer.gradient_clip_val=1.0, "
            f"or skip such batches with model.on_nonfinite_loss=skip."
        )

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
        if self.card is not None:  # a model without one (no ModelCardFromData) saves weights only
            checkpoint[SECTION] = self.card.to_checkpoint()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.frozen_backbone.drop()  # new weights (the fingerprint would see them too; this frees the copy now)
        # checkpoints written before the operating point existed: uncalibrated, 0.5
        state = checkpoint.get("state_dict", {})
        state.setdefault("temperature", torch.tensor(1.0))
        state.setdefault("threshold", torch.tensor(0.5))
        if ModelCard.missing(checkpoint):
            return  # no card of its own (another program's file): keep the model's
        card = ModelCard.from_checkpoint(checkpoint)
        # resuming or testing within a run keeps the run's own config (where its data is)
        self.card = card if self.card is None else replace(card, config=self.card.config)
