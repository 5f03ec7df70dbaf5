"""Make a feature-extractor backbone from a timm model name, with clear failures."""

from __future__ import annotations

import difflib
from pathlib import Path

import timm
from timm.models import group_modules
from torch import nn

from crack_lightning import CrackLightningError

# The config group's choices (conf/backbone/*.yaml), named in error messages.
CONFIG_CHOICES = {
    "mobilenetv2": "mobilenetv2_100",
    "efficientnet": "efficientnet_b0",
    "custom_cnn": "custom_cnn",
    "timm": "backbone.name=<any timm model name>",
}


def create_backbone(
    name: str,
    pretrained: bool = False,
    weights: str | None = None,
    global_pool: str = "avg",
    **kwargs,
) -> nn.Module:
    """Create ``name`` from timm's registry without its classifier.

    The result maps images to pooled features of size ``backbone.num_features``;
    the classifier head lives in :class:`~crack_lightning.models.CrackClassifier`.

    Args:
        name: timm model name, optionally with a pretrained tag (``mobilenetv2_100.ra_in1k``).
        pretrained: load ImageNet weights (from the Hugging Face hub or its local cache).
        weights: a local ``.safetensors``/``.pth`` file of the same timm model's ImageNet
            weights; implies ``pretrained`` and never touches the network.
        global_pool: timm pooling type for the features (``avg``, ``max``, ``avgmax``...).
        kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``).
    """
    arch = timm.models.get_arch_name(name)
    if not timm.is_model(arch):
        raise CrackLightningError(_unknown_model_message(name))
    create_kwargs = dict(num_classes=0, global_pool=global_pool, **kwargs)
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise CrackLightningError(
                f"backbone.weights={weights}: no such file. Point it at the ImageNet weights "
                f"of '{name}' (model.safetensors or pytorch_model.bin), or set backbone.weights=null."
            )
        # a `file` entry in the pretrained cfg wins over the hub and any URL
        return timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **create_kwargs
        )
    try:
        return timm.create_model(name, pretrained=pretrained, **create_kwargs)
    except OSError as err:  # hub errors and URLError are OSErrors
        if not pretrained:
            raise
        raise CrackLightningError(
            f"Could not get ImageNet weights for backbone '{name}': the Hugging Face hub is "
            f"unreachable and the weights are not in the local cache ({type(err).__name__}). "
            f"Either train from scratch with backbone.pretrained=false, or download the "
            f"weights on a connected machine (huggingface.co/timm/<model>/model.safetensors) "
            f"and pass backbone.weights=/path/to/model.safetensors."
        ) from None


def _unknown_model_message(name: str) -> str:
    choices = ", ".join(f"{k} ({v})" for k, v in CONFIG_CHOICES.items())
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return (
        f"Unknown backbone '{name}': not a timm model.{hint} "
        f"Choices: backbone={choices}; `timm.list_models()` lists every timm name."
    )


def stage_modules(backbone: nn.Module) -> list[list[nn.Module]]:
    """The backbone's stages, input side first, from timm's coarse group matcher.

    Each stage is the list of its parameterised sub-modules; "the last N stages"
    are ``stage_modules(b)[-N:]``.
    """
    groups = group_modules(backbone, backbone.group_matcher(coarse=True))
    return [[backbone.get_submodule(n) for n in groups[k]] for k in sorted(groups)]
