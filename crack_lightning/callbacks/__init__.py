"""Lightning callbacks: fine-tuning schedule, operating point, run reports and progress."""

from crack_lightning.callbacks.errors import ErrorGallery
from crack_lightning.callbacks.figures import AugmentationPreview, TestReport
from crack_lightning.callbacks.finetune import FreezeUnfreeze
from crack_lightning.callbacks.operating_point import OperatingPoint
from crack_lightning.callbacks.progress import EpochLog
from crack_lightning.callbacks.throughput import EpochThroughput

__all__ = [
    "AugmentationPreview", "EpochLog", "EpochThroughput", "ErrorGallery", "FreezeUnfreeze", "OperatingPoint", "TestReport",
]
