"""Distributed strategies that stay correct under freeze-then-unfreeze."""

from __future__ import annotations

from lightning.pytorch.strategies import DDPStrategy
from torch.nn.parallel import DistributedDataParallel


class FinetuneDDPStrategy(DDPStrategy):
    """DDP whose gradient reducer also covers parameters frozen at wrap time.

    ``DistributedDataParallel`` registers only the parameters that require grad when it
    wraps the model, and never looks again (Lightning issue 20340): a backbone frozen
    at wrap time and unfrozen later would train on each rank's own gradients and drift
    apart. This strategy marks every parameter trainable while wrapping, restores the
    frozen flags, and sets ``find_unused_parameters=True`` so the frozen ones are simply
    reported unused (no gradient, no all-reduce) until they are unfrozen.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("find_unused_parameters", True)
        super().__init__(**kwargs)

    def _setup_model(self, model) -> DistributedDataParallel:
        frozen = [p for p in model.parameters() if not p.requires_grad]
        for p in frozen:
            p.requires_grad_(True)
        try:
            return super()._setup_model(model)
        finally:
            for p in frozen:
                p.requires_grad_(False)
