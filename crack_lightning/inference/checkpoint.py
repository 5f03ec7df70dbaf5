"""Load a training checkpoint as a ready-to-run classifier, without the training data.

A checkpoint written by ``train.py`` carries, next to the weights, the resolved run
config (to rebuild the model), the class names, the exact preprocessing (input size,
interpolation, mean, std, native patch size) and the operating point (threshold and
temperature, also in the state dict as buffers). :func:`load_classifier` turns that
into a :class:`LoadedClassifier`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from crack_lightning import CrackLightningError
from crack_lightning.files import sha256_file


@dataclass
class LoadedClassifier:
    """A trained :class:`~crack_lightning.models.CrackClassifier` in eval mode, and its card."""

    model: torch.nn.Module
    class_names: list[str]
    preprocessing: dict  # input_size [h, w], interpolation, mean, std, patch_size [h, w] or None
    threshold: float
    temperature: float
    path: Path
    sha256: str
    operating_point: dict = field(default_factory=dict)


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict of ``path``, with a one-line error for a missing or foreign file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CrackLightningError(f"ckpt={path}: no such file. Point it at <run>/checkpoints/best.ckpt of a train.py run.")
    try:
        # weights_only: tensors and plain containers only -- a crafted pickle cannot run code
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, or objects a checkpoint must not hold
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CrackLightningError(
            f"ckpt={path}: refused, not a plain checkpoint ({type(err).__name__}: {first_line}). "
            f"Only load checkpoints written by train.py."
        ) from err
    extra = checkpoint.get("crack_lightning") if isinstance(checkpoint, dict) else None
    if not extra or not extra.get("config") or not extra.get("preprocessing"):
        raise CrackLightningError(
            f"ckpt={path}: not a crack-lightning checkpoint with its config and preprocessing "
            f"(written by an older version or another program); retrain with train.py."
        )
    return checkpoint


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> LoadedClassifier:
    """Rebuild the model from the checkpoint's own config and load its weights.

    The backbone is built with ``pretrained=false``: the checkpoint has the weights, so
    nothing is downloaded.
    """
    path = Path(path).expanduser()
    checkpoint = read_checkpoint(path)
    extra = checkpoint["crack_lightning"]
    model_cfg = OmegaConf.create(extra["config"]["model"])
    model_cfg.backbone.pretrained = False
    if "weights" in model_cfg.backbone:
        model_cfg.backbone.weights = None
    model = instantiate(model_cfg)
    model.on_load_checkpoint(checkpoint)  # fills defaults for keys older checkpoints lack
    model.load_state_dict(checkpoint["state_dict"])
    model.eval().to(device)
    return LoadedClassifier(
        model=model,
        class_names=list(extra["class_names"]),
        preprocessing=dict(extra["preprocessing"]),
        threshold=float(model.threshold),
        temperature=float(model.temperature),
        path=path,
        sha256=sha256_file(path),
        operating_point=dict(extra.get("operating_point") or {}),
    )
