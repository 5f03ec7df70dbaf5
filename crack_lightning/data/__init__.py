"""Data: the ImageFolder data module, splits, transforms and the synthetic dataset."""

from crack_lightning.data.datamodule import CrackDataModule

__all__ = ["CrackDataModule"]
