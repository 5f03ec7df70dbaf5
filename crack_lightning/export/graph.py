"""What every export shares: torch's ONNX program of a module at an opset, the parity error,
and the images its checks read."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import onnx
import torch
from PIL import Image
from torch import nn

from crack_lightning import CrackLightningError
from crack_lightning.data.dataset import to_rgb

# torch's (dynamo) exporter writes opset 18 natively; other opsets go through a version
# converter that fails quietly for some graphs, so the result is checked (graph_program).
OPSET = 18


class ParityError(CrackLightningError):
    """The ONNX model's probabilities differ from PyTorch's by more than the tolerance."""


def graph_program(module: nn.Module, example: tuple, input_names: list[str], output_names: list[str],
                  dynamic_shapes: dict, opset: int = OPSET):
    """torch's dynamo export of ``module`` at ``opset``; a user error when it cannot write that opset."""
    if not 1 <= int(opset) <= onnx.defs.onnx_opset_version():
        raise CrackLightningError(f"opset={opset}: onnx {onnx.__version__} knows opsets 1 to "
                                  f"{onnx.defs.onnx_opset_version()}; use opset={OPSET}.")
    with _quiet("onnx_ir", "onnxscript"), torch.no_grad():  # a dozen INFO lines per export about graph passes
        program = torch.onnx.export(module.eval(), example, None, input_names=input_names,
                                    output_names=output_names, dynamic_shapes=dynamic_shapes,
                                    opset_version=int(opset), dynamo=True, verbose=False)
    written = program.model.opset_imports.get("", None)
    if written != int(opset):
        raise CrackLightningError(
            f"opset={opset}: torch's exporter could not convert this model to it (it stays at opset "
            f"{written}). Use opset={OPSET}, which onnxruntime 1.14 and later runs."
        )
    return program


def read_rgb(file: Path) -> Image.Image:
    """``file`` as an RGB image, as predict.py reads it; a user error when it is no image."""
    try:
        with Image.open(file) as img:
            return to_rgb(img)
    except Exception as err:  # noqa: BLE001 - not an image, truncated: say which file
        raise CrackLightningError(f"{file}: cannot be read as an image for the export's check ({err}).") from None


@contextmanager
def _quiet(*names: str):
    """Raise these loggers to WARNING for the duration of the block."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
