"""Lightning callbacks: fine-tuning schedule and run reports."""

from crack_lightning.callbacks.figures import AugmentationPreview, TestReport
from crack_lightning.callbacks.finetune import FreezeUnfreeze

__all__ = ["AugmentationPreview", "FreezeUnfreeze", "TestReport"]
