"""Backbones: everything is made by ``timm.create_model``.

Importing this package registers our own architectures (``custom_cnn``) in timm's
model registry, so a config only ever names a timm model.
"""

from crack_lightning.backbones import custom_cnn  # noqa: F401  (registers custom_cnn with timm)
from crack_lightning.backbones.factory import create_backbone, stage_modules

__all__ = ["create_backbone", "stage_modules"]
