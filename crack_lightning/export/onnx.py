"""Export a trained classifier to ONNX, checked against PyTorch (onnxruntime runs it: :mod:`~crack_lightning.inference.onnx_backend`).

The ``.onnx`` file describes itself: next to the graph its metadata carries the
preprocessing, class names and crack classes, threshold, temperature, the checkpoint's
SHA-256 and operating point, so ``predict.py`` needs the file and onnxruntime, not the
checkpoint or the model code. Preprocessing stays outside the graph: resizing a PIL image is
:func:`~crack_lightning.data.augmentation.eval_transform`'s job for both backends, so
PyTorch and onnxruntime see identical tensors and a parity check compares models only.

The graph has one input, ``images`` (float32 ``[batch, 3, H, W]``, batch dynamic), and
two outputs, ``crack_probability`` (``[batch]``, P(any crack class), temperature applied)
and ``logits`` (``[batch, N]``, in ``class_names`` order).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from crack_lightning import CrackLightningError, __version__
from crack_lightning.utils.files import atomic_path
from crack_lightning.inference.backends import TorchBackend
from crack_lightning.inference.checkpoint import LoadedClassifier
from crack_lightning.inference.onnx_backend import CONTRACT, INPUT, OUTPUTS, OnnxBackend, to_numpy

# torch's (dynamo) exporter writes opset 18 natively; other opsets go through a version
# converter that fails quietly for some graphs, so the result is checked (export_onnx).
OPSET = 18
class ParityError(CrackLightningError):
    """The ONNX model's probabilities differ from PyTorch's by more than the tolerance."""


class _Probabilities(nn.Module):
    """What the graph computes: the classifier's logits and its calibrated crack
    probability, through the model's own ``forward`` and ``crack_probability`` (its
    constant crack-class mask folds into a gather: two classes read label 1 alone)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(images)
        return self.model.crack_probability(logits), logits


def metadata(loaded: LoadedClassifier, opset: int) -> dict[str, str]:
    """The file's ``metadata_props`` (strings): the model card, and where and how it was exported."""
    return {
        **loaded.card.to_onnx_metadata(),
        "checkpoint": loaded.path.name,
        "checkpoint_sha256": loaded.sha256,
        "crack_lightning_version": __version__,
        "opset": str(opset),
        "contract": CONTRACT,
    }


def export_onnx(loaded: LoadedClassifier, output: str | Path, opset: int = OPSET,
                check_images: np.ndarray | None = None, atol: float = 1e-4) -> float | None:
    """Write ``loaded``'s model to ``output`` (an ``.onnx`` file) with its card as metadata.

    With ``check_images`` (preprocessed float32 ``[N, 3, H, W]``) the new file is run in
    onnxruntime and compared with PyTorch (:func:`parity_check`) *before* it replaces
    ``output``: a file at ``output`` has passed its check. Returns the largest absolute
    difference of probabilities, or ``None`` without a check.
    """
    output = Path(output)
    if not 1 <= int(opset) <= onnx.defs.onnx_opset_version():
        raise CrackLightningError(f"opset={opset}: onnx {onnx.__version__} knows opsets 1 to "
                                  f"{onnx.defs.onnx_opset_version()}; use opset={OPSET}.")
    model = loaded.model.eval()
    h, w = loaded.card.preprocessing.input_size
    # batch 2, not 1: torch.export specialises sizes 0 and 1 to constants
    example = torch.zeros(2, 3, int(h), int(w))
    with _quiet("onnx_ir", "onnxscript"):  # a dozen INFO lines per export about graph passes
        program = torch.onnx.export(
            _Probabilities(model).eval(), (example,), None,
            input_names=[INPUT], output_names=list(OUTPUTS),
            dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}},
            opset_version=int(opset), dynamo=True, verbose=False,
        )
    written = program.model.opset_imports.get("", None)
    if written != int(opset):
        raise CrackLightningError(
            f"opset={opset}: torch's exporter could not convert this model to it (it stays at opset "
            f"{written}). Use opset={OPSET}, which onnxruntime 1.14 and later runs."
        )
    program.model.metadata_props.update(metadata(loaded, int(opset)))
    with atomic_path(output) as tmp:
        program.save(tmp, external_data=False)
        diff = None
        if check_images is not None:
            try:
                diff = parity_check(_every_score(TorchBackend(loaded)), _every_score(OnnxBackend(tmp)),
                                    check_images, atol)
            except CrackLightningError as err:  # disagrees, or onnxruntime cannot load it
                raise type(err)(f"{output} not written: {err}") from None
    return diff


def _every_score(backend):
    """The crack probability and every class's side by side: all that predict.py writes."""
    return lambda images: np.column_stack(backend.scores(images))


def parity_check(reference, candidate, images: np.ndarray | torch.Tensor, atol: float = 1e-4) -> float:
    """Largest ``|p_candidate - p_reference|`` over ``images`` (arrays of any shape);
    :class:`ParityError` above ``atol``.

    The candidate runs the whole batch and then the first image alone, so a batch
    dimension frozen at export time fails here rather than in ``predict.py``.
    """
    images = np.ascontiguousarray(to_numpy(images), dtype=np.float32)
    expected = reference(images)
    diffs = [np.abs(candidate(images) - expected)]
    if len(images) > 1:
        diffs.append(np.abs(candidate(images[:1]) - expected[:1]))
    diff = float(max(d.max() for d in diffs))
    if not diff <= atol:  # NaN fails too
        raise ParityError(
            f"onnxruntime and PyTorch disagree on {len(images)} images: max |Δp| = "
            f"{diff:.3g} > atol={atol:g}. Try another opset=, or check=false to keep the file unchecked."
        )
    return diff


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
