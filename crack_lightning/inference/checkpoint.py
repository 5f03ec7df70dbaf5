"""Load a training checkpoint as a ready-to-run classifier, without the training data.

A checkpoint written by ``train.py`` carries, next to the weights, its
:class:`~crack_lightning.model_card.ModelCard`: the resolved run config (to rebuild the
model), the class names, the exact preprocessing (input size, interpolation, mean, std,
native patch size) and the operating point (threshold and temperature, in the state dict
as buffers). :func:`load_classifier` turns that into a :class:`LoadedClassifier`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pickle
import re

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from crack_lightning import CrackLightningError
from crack_lightning.utils.files import sha256_file
from crack_lightning.inference.model_files import require_model_file
from crack_lightning.model_card import SECTION, ModelCard


@dataclass
class LoadedClassifier:
    """A trained :class:`~crack_lightning.models.CrackClassifier` in eval mode, and its card."""

    model: torch.nn.Module
    card: ModelCard
    path: Path
    sha256: str


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict of ``path``, with a one-line error for a missing, foreign or incomplete file."""
    path = Path(path).expanduser()
    require_model_file(path, onnx_ok=False)
    try:
        # weights_only: tensors and plain containers only -- a crafted pickle cannot run code
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's text advises the unsafe way out: never relayed
        found = re.search(r"GLOBAL (\S+)", str(err))
        which = f" ({found[1]})" if found else ""
        raise CrackLightningError(
            f"ckpt={path}: holds Python objects beyond tensors and plain containers{which}; "
            f"refused, since loading it could run code. Use a checkpoint written by train.py."
        ) from None
    except Exception as err:  # noqa: BLE001 - truncated or damaged inside its zip archive
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        detail = f": {first_line}" if first_line and "weights_only" not in first_line else ""
        raise CrackLightningError(
            f"ckpt={path}: damaged, PyTorch cannot read it ({type(err).__name__}{detail}). Copy it again, "
            f"or use another checkpoint of the run."
        ) from None
    extra = checkpoint.get(SECTION) if isinstance(checkpoint, dict) else None
    if not extra or not extra.get("config") or not extra.get("preprocessing"):
        raise CrackLightningError(
            f"ckpt={path}: not a crack-lightning checkpoint with its config and preprocessing "
            f"(written by an older version or another program); retrain with train.py."
        )
    state = checkpoint.get("state_dict")
    lacks = ModelCard.missing(checkpoint)
    lacks += [key for key, there in (("crack_lightning.config.model", extra["config"].get("model")),
                                     ("state_dict", isinstance(state, dict) and state)) if not there]
    if lacks:
        raise CrackLightningError(
            f"ckpt={path}: lacks {', '.join(lacks)}, needed to rebuild the model and prepare images as in "
            f"training (an edited file, or one of another version). Use the checkpoint train.py wrote, or retrain."
        )
    return checkpoint


def load_classifier(path: str | Path, device: str | torch.device = "cpu",
                    operating_point: str | None = None) -> LoadedClassifier:
    """Rebuild the model from the checkpoint's own config and load its weights; read its scores
    at the named ``operating_point`` (recalibrate.py's) instead of its own, when given.

    The backbone is built with ``pretrained=false``: the checkpoint has the weights, so
    nothing is downloaded.
    """
    path = Path(path).expanduser()
    checkpoint = read_checkpoint(path)
    model_cfg = OmegaConf.create(checkpoint[SECTION]["config"]["model"])
    model_cfg.backbone.pretrained = False
    if "weights" in model_cfg.backbone:
        model_cfg.backbone.weights = None
    model = instantiate(model_cfg)
    model.on_load_checkpoint(checkpoint)  # its card; defaults for keys older checkpoints lack
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, KeyError) as err:
        mismatch = weights_mismatch(model, checkpoint["state_dict"], model_cfg.backbone.get("name"))
        raise CrackLightningError(f"ckpt={path}: {mismatch}") from err
    if operating_point:
        model.set_operating_point(model.card.point(operating_point))
    model.eval().to(device)
    return LoadedClassifier(model=model, card=model.card, path=path, sha256=sha256_file(path))


def weights_mismatch(model: torch.nn.Module, state: dict, backbone: str | None = None) -> str:
    """How a state dict differs from the model's: missing, unexpected and reshaped entries."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [f"{k} {list(getattr(state[k], 'shape', []))} in the file, {list(own[k].shape)} in the model"
                for k in own if k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)]
    parts = [f"{len(keys)} {label} (e.g. {keys[0]})" for label, keys in (
        ("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped)) if keys]
    return (f"its weights do not fit the model its config describes{f' ({backbone})' if backbone else ''}: "
            f"{', '.join(parts) or 'see load_state_dict'}. The file was edited or mixed with another run's config; "
            f"use the checkpoint train.py wrote.")
