"""The model card type: the checkpoint's and the .onnx file's stored shapes read and written
back unchanged, timm's data-config shape, and one-line refusals of an incomplete card."""

from __future__ import annotations

import doctest
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from crack_lightning import CrackLightningError, model_card
from crack_lightning.model_card import ModelCard, Preprocessing

PREPROCESSING = {"input_size": [224, 224], "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406],
                 "std": [0.229, 0.224, 0.225], "patch_size": [227, 227]}


def checkpoint() -> dict:
    """The card's part of a checkpoint as train.py writes it (OperatingPoint fitted)."""
    point = {"temperature": 1.7, "threshold": 0.3125, "target_recall": 0.99, "warnings": []}
    return {
        "state_dict": {"threshold": torch.tensor(0.3125), "temperature": torch.tensor(1.7)},
        "crack_lightning": {"class_names": ["Negative", "Positive"], "preprocessing": dict(PREPROCESSING),
                            "operating_point": point, "config": {"model": {"lr": 1e-4}, "seed": 0}},
    }


def test_checkpoint_round_trip_is_identical():
    ckpt = checkpoint()
    card = ModelCard.from_checkpoint(ckpt)
    assert card.to_checkpoint() == ckpt["crack_lightning"]
    assert (card.threshold, card.temperature) == (0.3125, pytest.approx(1.7))  # from the state dict's buffers
    assert ModelCard.from_onnx_metadata(card.to_onnx_metadata()) == replace(card, config=None)  # no config in .onnx


def test_older_checkpoints_still_read():
    """No operating point (uncalibrated, 0.5) and no patch_size (the window is the input size)."""
    ckpt = checkpoint()
    del ckpt["state_dict"]["threshold"], ckpt["state_dict"]["temperature"], ckpt["crack_lightning"]["operating_point"]
    del ckpt["crack_lightning"]["preprocessing"]["patch_size"]
    card = ModelCard.from_checkpoint(ckpt)
    assert (card.threshold, card.temperature, card.operating_point) == (0.5, 1.0, {})
    assert card.preprocessing.native_size == card.preprocessing.input_size == (224, 224)


def test_timm_data_config_shape():
    pre = Preprocessing.from_dict(PREPROCESSING)
    timm_cfg = pre.to_timm_data_config()
    assert timm_cfg["input_size"] == (3, 224, 224) and timm_cfg["interpolation"] == "bicubic"
    assert Preprocessing.from_timm_data_config(timm_cfg, patch_size=(227, 227)) == pre
    assert pre.to_dict() == PREPROCESSING


def test_a_missing_preprocessing_key_is_one_line():
    lacking = {k: v for k, v in PREPROCESSING.items() if k != "std"}
    with pytest.raises(CrackLightningError) as err:
        Preprocessing.from_dict(lacking)
    assert "preprocessing lacks std" in str(err.value) and "\n" not in str(err.value)
    ckpt = checkpoint()
    del ckpt["crack_lightning"]["preprocessing"]["interpolation"], ckpt["crack_lightning"]["class_names"]
    with pytest.raises(CrackLightningError) as err:
        ModelCard.from_checkpoint(ckpt, where="ckpt=best.ckpt")
    line = str(err.value)
    assert line.startswith("ckpt=best.ckpt: lacks crack_lightning.preprocessing.interpolation, "
                           "crack_lightning.class_names") and "\n" not in line


def test_docstring_example_and_no_torch():
    assert doctest.testmod(model_card).failed == 0
    code = "import sys, crack_lightning.model_card; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
