"""Where the model sees a crack: Grad-CAM (Selvaraju et al.) through captum's LayerGradCam.

Of the crack class for a two-class model; of each image's predicted class (argmax) for more,
where no single class is "the crack" (cracks of several kinds, stains, joints, ...).
"""

from __future__ import annotations

import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn


def target_layer(backbone: nn.Module) -> nn.Module:
    """The last spatial stage: timm's ``feature_info`` names it; otherwise the last conv."""
    info = getattr(backbone, "feature_info", None)
    if info is not None and len(info):
        last = info[-1] if isinstance(info, list) else info.get_dicts()[-1]
        return backbone.get_submodule(last["module"])
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(backbone).__name__} has no convolution to take Grad-CAM from.")
    return convs[-1]


class _Logits(nn.Module):
    """backbone + head with autograd always on (the classifier's own forward skips
    autograd through a frozen backbone, which Grad-CAM needs), run eagerly: ``.forward``
    bypasses a ``trainer.compile`` wrapper, whose graphs captum's hooks would break."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone, self.head = model.backbone, model.head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward(images))


def num_classes(model: nn.Module) -> int:
    """The classes the head scores (its last linear layer's outputs)."""
    return [m for m in model.head.modules() if isinstance(m, nn.Linear)][-1].out_features


def gradcam(model: nn.Module, images: torch.Tensor, target: int | None = None) -> torch.Tensor:
    """Grad-CAM maps of class ``target`` for normalised ``images`` (N, 3, H, W): (N, H, W) in
    [0, 1], each map scaled by its own maximum (0 everywhere when no region speaks for the
    class). ``None``: label 1, the crack class, of two; each image's predicted class of more."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            images = images.detach().clone().requires_grad_(True)  # no inference tensors
            net = _Logits(model)
            if target is None:
                target = 1 if num_classes(model) == 2 else net(images).argmax(dim=1).detach()
            cam = LayerGradCam(net, target_layer(model.backbone))
            maps = cam.attribute(images, target=target, relu_attributions=True)
            maps = LayerAttribution.interpolate(maps, tuple(images.shape[-2:]), interpolate_mode="bilinear")
        maps = maps.detach()[:, 0].clamp_min(0)
        peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
        return (maps / peak).cpu()
    finally:
        model.train(was_training)


def gradcam_figure(model: nn.Module, images: torch.Tensor, mean, std, titles=None, colors=None, suptitle: str | None = None):
    """A grid of ``images`` (normalised, (N, 3, H, W)) with the Grad-CAM map of the crack
    class (more classes: of the predicted one) blended over each: red where the model sees
    evidence for it."""
    from crack_lightning.reports.plots import denormalize, image_grid_figure, overlay_heatmap

    device = next(model.parameters()).device
    maps = gradcam(model, images.to(device).contiguous(memory_format=torch.channels_last))
    shown = denormalize(images.float().cpu(), mean, std)
    overlays = torch.stack([
        torch.from_numpy(overlay_heatmap(img.permute(1, 2, 0).numpy(), heat.numpy())).permute(2, 0, 1)
        for img, heat in zip(shown, maps)
    ])
    default = ("Grad-CAM of the crack class (red = evidence for crack)" if num_classes(model) == 2 else
               "Grad-CAM of the predicted class (red = evidence for it)")
    return image_grid_figure(overlays, titles, colors, suptitle=suptitle or default)
