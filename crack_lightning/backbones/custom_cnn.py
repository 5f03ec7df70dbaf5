"""A small CNN of our own, in the spirit of the Keras ``Sequential`` conv/pool stacks.

It follows timm's model interface (``forward_features``, ``forward_head``,
``reset_classifier``, ``group_matcher``, ``num_features``, a pretrained cfg) and is
registered with ``@register_model``, so ``timm.create_model("custom_cnn")`` builds it
like any other backbone and the freeze-then-unfreeze schedule can find its stages.
"""

from __future__ import annotations

import torch
from torch import nn
from timm.layers import ClassifierHead
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

__all__ = ["CrackCNN"]


def _conv_stage(in_chs: int, out_chs: int) -> nn.Sequential:
    # conv-BN-ReLU twice, then halve the resolution: the Keras Conv2D/MaxPool2D recipe
    # with BatchNorm added so it trains from scratch at Adam's usual learning rates.
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class CrackCNN(nn.Module):
    """Stacked conv/pool stages followed by a pooled linear classifier."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        widths: tuple[int, ...] = (32, 64, 128, 256),
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        **kwargs,  # timm passes a few generic kwargs (e.g. drop_path_rate) we do not use
    ):
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        chans = (in_chans, *widths)
        self.stages = nn.Sequential(*[_conv_stage(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self.num_features = self.head_hidden_size = widths[-1]
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        # one group per conv/pool stage: "last N stages" means the last N of these
        return dict(blocks=r"^stages\.(\d+)")

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


default_cfgs = generate_default_cfgs(
    {
        # No published weights. The normalisation is ImageNet's so that swapping the
        # backbone does not change the data path; the 227 px input is the dataset's.
        "custom_cnn": dict(
            input_size=(3, 227, 227),
            interpolation="bilinear",
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            crop_pct=1.0,
            num_classes=1000,
            classifier="head.fc",
        ),
    }
)


@register_model
def custom_cnn(pretrained: bool = False, **kwargs) -> CrackCNN:
    """Four conv/pool stages of 32-64-128-256 channels (about 1.2 M parameters)."""
    return build_model_with_cfg(CrackCNN, "custom_cnn", pretrained, **kwargs)
