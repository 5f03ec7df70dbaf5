"""Freeze the backbone, train the head, then unfreeze the backbone (or its last stages)."""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning, EarlyStopping
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from crack_lightning import CrackLightningError
from crack_lightning.backbones import stage_modules

log = logging.getLogger(__name__)


class FreezeUnfreeze(BaseFinetuning):
    """Freeze-then-unfreeze fine-tuning of ``pl_module.backbone``.

    While frozen, the backbone's parameters have ``requires_grad=False`` and its modules
    are kept in eval mode, so BatchNorm running statistics do not move and dropout is
    off — the backbone is a fixed feature extractor, as in Keras' ``training=False``.
    At ``unfreeze_at_epoch`` the backbone (or its last ``unfreeze_stages`` stages from
    timm's group matcher) becomes trainable and joins the optimizer as a new parameter
    group at ``lr * backbone_lr_ratio``, following the same LR schedule as the head.

    While the whole backbone is frozen, ``pl_module.frozen_backbone`` (where the module has
    one, :mod:`crack_lightning.models.frozen`) hears at each epoch start how many training
    images the frozen phase has left, so ``trainer.frozen_backbone=auto`` can judge whether
    an optimised copy pays back; at the unfreeze the copy is dropped.

    Unlike Lightning's ``BackboneFinetuning`` (Lightning issue 21901), unfreezing is
    derived from the epoch, not triggered only on ``epoch == unfreeze_at_epoch``: a run
    resumed from a checkpoint taken after the unfreeze epoch is unfrozen again, and its
    restored backbone parameter group is reused rather than added twice.

    Args:
        unfreeze_at_epoch: first epoch that trains the backbone; ``0`` trains it from the
            start, ``None`` never (a frozen feature extractor).
        backbone_lr_ratio: backbone lr as a multiple of the head's base lr.
        unfreeze_stages: unfreeze only the last N stages; ``None`` unfreezes all of it.
        train_bn: whether BatchNorm layers of unfrozen stages train (False keeps them
            frozen in eval mode, as the Keras fine-tuning guide advises for small data).
        reset_early_stopping: make sure EarlyStopping cannot end the run before the first
            fine-tuning epoch (``min_epochs``) and give it fresh patience at the unfreeze.
    """

    def __init__(
        self,
        unfreeze_at_epoch: int | None = 1,
        backbone_lr_ratio: float = 0.1,
        unfreeze_stages: int | None = None,
        train_bn: bool = True,
        reset_early_stopping: bool = True,
    ):
        super().__init__()
        if unfreeze_stages is not None and unfreeze_stages < 1:
            raise CrackLightningError(f"finetune.unfreeze_stages={unfreeze_stages}: give a whole number >= 1, "
                                      f"or null to unfreeze the whole backbone.")
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.backbone_lr_ratio = backbone_lr_ratio
        self.unfreeze_stages = unfreeze_stages
        self.train_bn = train_bn
        self.reset_early_stopping = reset_early_stopping
        self._frozen: list[nn.Module] = []  # modules to hold in eval mode

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.unfreeze_stages is not None:  # more stages than the backbone has would unfreeze all, silently
            stages = len(stage_modules(pl_module.backbone))
            if self.unfreeze_stages > stages:
                raise CrackLightningError(
                    f"finetune.unfreeze_stages={self.unfreeze_stages}: this backbone has {stages} stages (timm's "
                    f"group matcher); choose 1 to {stages}, or null to unfreeze all of it.")
        super().setup(trainer, pl_module, stage)  # freezes
        if self.reset_early_stopping and self.unfreeze_at_epoch is not None:
            # early stopping cannot end the run before at least one fine-tuning epoch
            loop = trainer.fit_loop
            loop.min_epochs = max(loop.min_epochs or 0, self.unfreeze_at_epoch + 1)

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        self.freeze(pl_module.backbone, train_bn=False)
        self._frozen = [pl_module.backbone]

    def _modules_to_unfreeze(self, backbone: nn.Module) -> list[nn.Module]:
        if self.unfreeze_stages is None:
            return [backbone]
        return [m for stage in stage_modules(backbone)[-self.unfreeze_stages:] for m in stage]

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        if self.unfreeze_at_epoch is None or epoch < self.unfreeze_at_epoch:
            return
        modules = self._modules_to_unfreeze(pl_module.backbone)
        self.make_trainable(modules)
        if not self.train_bn:
            self.freeze([m for m in self.flatten_modules(modules) if isinstance(m, nn.modules.batchnorm._BatchNorm)], train_bn=False)
        # Identity, not value, decides what the optimizer holds: BaseFinetuning's
        # filter_on_optimizer compares values, and freshly initialised BatchNorm weights
        # (all ones) would look "already present".
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        new = [p for p in pl_module.backbone.parameters() if p.requires_grad and id(p) not in held]
        if new:
            head = optimizer.param_groups[0]
            base_lr = head.get("initial_lr", head["lr"]) * self.backbone_lr_ratio
            progress = head["lr"] / head["initial_lr"] if head.get("initial_lr") else 1.0
            optimizer.add_param_group({"params": new, "lr": base_lr * progress, "initial_lr": base_lr, "name": "backbone"})
            log.info("Epoch %d: unfroze %d backbone parameter tensors at lr %.3g", epoch, len(new), base_lr)
            if self.reset_early_stopping:
                self._reset_early_stopping(pl_module.trainer)
        extend_schedulers(pl_module.trainer, optimizer)
        self._frozen = self._still_frozen(pl_module.backbone)

    @staticmethod
    def _still_frozen(backbone: nn.Module) -> list[nn.Module]:
        # modules owning parameters, all frozen (BatchNorm above all); parameter-free
        # layers such as dropout follow the training mode of the model
        frozen = []
        for module in BaseFinetuning.flatten_modules(backbone):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                frozen.append(module)
        return frozen

    @staticmethod
    def _reset_early_stopping(trainer: L.Trainer) -> None:
        for cb in trainer.callbacks:
            if isinstance(cb, EarlyStopping):
                cb.wait_count = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Resumed from a mid-epoch (or end-of-epoch) checkpoint, Lightning skips
        # on_train_epoch_start for the interrupted epoch: apply its schedule here, or the
        # restored backbone group would hold frozen parameters and the restored LR
        # scheduler would have fewer lambdas than groups.
        loop = trainer.fit_loop
        if loop.restarted_mid_epoch or loop.restarted_on_epoch_end:
            self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)  # runs finetune_function
        # Lightning does not call model.train() at each epoch start; it restores every
        # module's own mode after validation. So set the modes here, once per epoch:
        # unfrozen parts train, frozen parts stay in eval mode all epoch.
        pl_module.backbone.train()
        for module in self._frozen:
            module.eval()
        trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        pl_module.log("train/trainable_params", float(trainable), on_step=False, on_epoch=True)
        frozen_copy = getattr(pl_module, "frozen_backbone", None)
        if frozen_copy is not None:
            if any(p.requires_grad for p in pl_module.backbone.parameters()):
                frozen_copy.drop()
            else:
                fixed = not getattr(trainer.datamodule, "augments", True)  # (a data module of one's own: assume it does)
                frozen_copy.plan(self._frozen_images_ahead(trainer), pl_module.device, fixed_inputs=fixed)

    def _frozen_images_ahead(self, trainer: L.Trainer) -> float:
        """Training images the frozen backbone still sees, this epoch included (validation's
        few are left out: the estimate errs towards eager)."""
        last = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else float("inf")
        if self.unfreeze_at_epoch is not None:
            last = min(last, self.unfreeze_at_epoch)
        loader = trainer.train_dataloader
        batch = getattr(loader, "batch_size", None) or 1
        steps = (last - trainer.current_epoch) * trainer.num_training_batches
        if trainer.max_steps is not None and trainer.max_steps >= 0:
            steps = min(steps, trainer.max_steps - trainer.global_step)
        return max(0.0, steps) * batch


def extend_schedulers(trainer: L.Trainer, optimizer: Optimizer) -> None:
    """Make the LR schedulers of ``optimizer`` drive parameter groups added after they were built.

    torch schedulers keep per-group lists (``base_lrs``, ``lr_lambdas``, ``min_lrs``)
    sized when created and silently skip groups beyond them. Idempotent, so it also
    repairs schedulers restored from a checkpoint after the unfreeze.
    """
    for config in trainer.lr_scheduler_configs:
        if config.scheduler.optimizer is optimizer:
            _extend(config.scheduler, optimizer.param_groups)


def _extend(scheduler, groups: list[dict]) -> None:
    for child in getattr(scheduler, "_schedulers", []):  # SequentialLR, ChainedScheduler
        _extend(child, groups)
    n = len(groups)
    if isinstance(scheduler, ReduceLROnPlateau):
        scheduler.min_lrs += [scheduler.min_lrs[0]] * (n - len(scheduler.min_lrs))
        return
    if hasattr(scheduler, "lr_lambdas"):
        scheduler.lr_lambdas += [scheduler.lr_lambdas[0]] * (n - len(scheduler.lr_lambdas))
    if hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs += [g["initial_lr"] for g in groups[len(scheduler.base_lrs):]]
    if hasattr(scheduler, "_last_lr"):
        scheduler._last_lr += [g["lr"] for g in groups[len(scheduler._last_lr):]]
