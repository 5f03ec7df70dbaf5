"""Export a trained classifier to ONNX, checked against PyTorch (onnxruntime runs it: :mod:`~crack_lightning.inference.onnx_backend`).

The ``.onnx`` file describes itself: next to the graph its metadata carries the
preprocessing, class names and crack classes, threshold, temperature, the checkpoint's
SHA-256 and operating point, so ``predict.py`` needs the file and onnxruntime, not the
checkpoint or the model code. Preprocessing is inside the graph (contract 2): it takes uint8
RGB pixels ``[batch, H, W, 3]`` of any size, resizes them as
:func:`~crack_lightning.data.augmentation.eval_transform` does, normalises, and outputs
``crack_probability`` ``[batch]`` and ``logits`` ``[batch, N]``; numpy and onnxruntime alone
run it. Backbones that dense whole-photo inference supports get a second graph beside it
(:mod:`.dense`), written with it or not at all.

Two parity checks guard the file: on the very pixels PyTorch sees (``atol``: the models
agree), and on the original images resized in the graph (``resize_atol``: torchvision's
uint8 resize uses fixed-point weights, the graph float32 ones, so a few pixels differ by one
level).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from crack_lightning import CrackLightningError, __version__
from crack_lightning.data.augmentation import eval_transform
from crack_lightning.inference.backends import TorchBackend
from crack_lightning.inference.checkpoint import LoadedClassifier
from crack_lightning.inference.onnx_backend import (CONTRACT, CONTRACT_VERSION, INPUT, OUTPUTS, OnnxBackend,
                                                    to_numpy)
from crack_lightning.inference.model_files import DENSE_ROLES, dense_paths
from crack_lightning.model_card import Preprocessing
from crack_lightning.utils.files import atomic_path, sha256_file
from crack_lightning.export import dense
from crack_lightning.export.graph import OPSET, ParityError, graph_program

INTERPOLATIONS = ("bilinear", "bicubic")  # what ONNX Resize antialiases as torchvision does


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


class _FromPixels(nn.Module):
    """uint8 ``[N, H, W, 3]`` -> eval_transform's input to the model, then :class:`_Probabilities`."""

    def __init__(self, model: nn.Module, pre: Preprocessing):
        super().__init__()
        if pre.interpolation not in INTERPOLATIONS:
            raise CrackLightningError(f"preprocessing.interpolation={pre.interpolation}: the exported graph resizes "
                                      f"with {' or '.join(INTERPOLATIONS)} only; train with one of them.")
        self.probabilities = _Probabilities(model)
        self.size, self.mode = tuple(int(v) for v in pre.input_size), pre.interpolation
        self.register_buffer("shift", torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("scale", 1 / (torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1) * 255))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = pixels.permute(0, 3, 1, 2).float()
        # torchvision resizes uint8 width first, then height, and keeps whole levels between
        # the passes: one pass in float instead differs in ~5% of pixels, two in ~0.05%
        x = self._resize(x, (x.shape[2], self.size[1]))
        x = self._resize(x, self.size)
        return self.probabilities((x - self.shift) * self.scale)

    def _resize(self, x: torch.Tensor, size) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode=self.mode, align_corners=False, antialias=True)
        return x.round().clamp(0, 255)


def metadata(loaded: LoadedClassifier, opset: int) -> dict[str, str]:
    """The file's ``metadata_props`` (strings): the model card, and where and how it was exported."""
    return {
        **loaded.card.to_onnx_metadata(),
        "checkpoint": loaded.path.name,
        "checkpoint_sha256": loaded.sha256,
        "crack_lightning_version": __version__,
        "opset": str(opset),
        "contract": CONTRACT,
        "contract_version": CONTRACT_VERSION,
        "format": "onnx",
    }


def main_program(loaded: LoadedClassifier, opset: int = OPSET):
    """The contract-2 graph of ``loaded`` (uint8 pixels in), with its card as metadata."""
    h, w = (int(v) for v in loaded.card.preprocessing.input_size)
    # batch 2, not 1, and a size unlike the input's: torch.export specialises sizes 0 and 1, and equal ones
    example = torch.zeros(2, h + 3, w + 5, 3, dtype=torch.uint8)
    dims = {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("height", min=2),
            2: torch.export.Dim("width", min=2)}
    program = graph_program(_FromPixels(loaded.model.eval(), loaded.card.preprocessing), (example,), [INPUT],
                            list(OUTPUTS), {"pixels": dims}, opset)
    program.model.metadata_props.update(metadata(loaded, int(opset)))
    return program


@dataclass
class Exported:
    """What :func:`export_onnx` wrote and measured (``None``: not checked, or no dense graph)."""

    output: Path
    max_abs_diff: float | None = None  # the same pixels through both: the models
    resize_abs_diff: float | None = None  # the original images, resized in the graph vs by torchvision
    dense: tuple[Path, Path] | None = None  # the features and head graphs
    dense_abs_diff: float | None = None
    notes: dict | None = None  # what ``finish`` reported (onnx-int8: the gate)


def export_onnx(loaded: LoadedClassifier, output: str | Path, opset: int = OPSET,
                check_images: list[Image.Image] | None = None, atol: float = 1e-4, resize_atol: float = 1e-3,
                finish: Callable[[Path], dict] | None = None) -> Exported:
    """Write ``loaded``'s model to ``output`` (an ``.onnx`` file) with its card as metadata, and
    its dense graphs to ``<stem>.dense.onnx`` and ``<stem>.dense-head.onnx`` when the backbone has
    them: all three files or none.

    With ``check_images`` (RGB PIL images of any size) the new files are run in onnxruntime
    and compared with PyTorch *before* they replace anything: a file at ``output`` has passed
    its check. ``finish(tmp)`` may then rewrite the checked main file in place (onnx-int8
    quantizes it) or raise to write nothing; what it returns is :attr:`Exported.notes`.
    """
    output = Path(output)
    program = main_program(loaded, opset)
    dense_programs, geometry = dense.dense_programs(loaded, opset)
    result = Exported(output)
    with ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(output))
        if dense_programs is not None:
            result.dense = dense_paths(output)
            dense_tmps = [stack.enter_context(atomic_path(p)) for p in result.dense]
            for role, prog, path, dense_tmp in zip(DENSE_ROLES, dense_programs, result.dense, dense_tmps):
                prog.model.metadata_props.update({
                    key: program.model.metadata_props[key] for key in ("checkpoint", "checkpoint_sha256",
                                                                       "crack_lightning_version", "opset")})
                prog.model.metadata_props["dense_graph_of"] = output.name
                prog.save(dense_tmp, external_data=False)
                program.model.metadata_props.update({f"{role}_graph": path.name,
                                                     f"{role}_sha256": sha256_file(dense_tmp)})
            program.model.metadata_props.update(geometry.to_metadata())
        program.save(tmp, external_data=False)
        try:
            if check_images:
                result.max_abs_diff, result.resize_abs_diff = check_main(loaded, tmp, check_images, atol,
                                                                         resize_atol)
                if dense_programs is not None:
                    result.dense_abs_diff = dense.check_dense(loaded, dense_tmps, check_images, atol)
            if finish is not None:
                result.notes = finish(tmp)
        except CrackLightningError as err:  # disagrees, onnxruntime cannot load it, int8 refused
            raise type(err)(f"{output} not written: {err}") from None
    return result


def check_main(loaded: LoadedClassifier, path: Path, images: list[Image.Image], atol: float,
               resize_atol: float) -> tuple[float, float]:
    """Max |Δp| of the file at ``path`` vs PyTorch: on eval_transform's pixels, and on the images as
    they are (resized in the graph); :class:`ParityError` above ``atol`` / ``resize_atol``."""
    transform = eval_transform(loaded.card.preprocessing.to_timm_data_config())
    floats = np.stack([transform(image).numpy() for image in images])
    reference, candidate = _every_score(TorchBackend(loaded)), _every_score(OnnxBackend(path))
    same = parity_check(reference, candidate, floats, atol)
    expected = reference(floats)
    resized = max(float(np.abs(candidate(np.asarray(image)[None]) - expected[i:i + 1]).max())
                  for i, image in enumerate(images))
    if not resized <= resize_atol:
        raise ParityError(f"the graph's resize and torchvision's disagree on {len(images)} images: max |Δp| = "
                          f"{resized:.3g} > resize_atol={resize_atol:g}. Raise resize_atol=, or check=false to keep "
                          f"the file unchecked.")
    return same, resized


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
