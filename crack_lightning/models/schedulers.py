"""Learning-rate schedules built as Hydra partials: ``scheduler(optimizer, total_steps=..., steps_per_epoch=...)``."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 1.0,
    min_lr_ratio: float = 0.01,
) -> LambdaLR:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` of each group's base lr.

    It is a closed-form ``LambdaLR`` (step-wise), so a parameter group added later —
    the backbone at the unfreeze epoch — follows the same curve from where it joins
    once :class:`~crack_lightning.callbacks.FreezeUnfreeze` gives it the same lambda.
    """
    warmup = max(0, round(warmup_epochs * steps_per_epoch))
    total = max(total_steps, warmup + 1)

    def factor(step: int) -> float:  # a plain function: LambdaLR does not pickle it into checkpoints
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
