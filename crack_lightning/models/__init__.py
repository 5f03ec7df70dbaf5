"""Models: the LightningModule and its learning-rate schedules."""

from crack_lightning.models.classifier import CrackClassifier

__all__ = ["CrackClassifier"]
