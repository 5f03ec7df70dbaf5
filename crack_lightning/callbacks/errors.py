"""The test images that matter most when a model is wrong, and where it looked."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from crack_lightning.callbacks.figures import publish_figure
from crack_lightning.evaluation.gradcam import gradcam_figure
from crack_lightning.reports.plots import denormalize, image_grid_figure
from crack_lightning.trainer.distributed import gather_objects


class _TopK:
    """The ``k`` highest-scoring (score, image, title) seen so far; memory stays O(k)."""

    def __init__(self, k: int):
        self.k = k
        self.items: list[tuple[float, torch.Tensor, str]] = []

    def offer(self, indices: torch.Tensor, scores: torch.Tensor, images: torch.Tensor,
              title: Callable[[int], str]) -> None:
        """Of a batch's images at ``indices``, keep the top; ``title(j)``: the caption of batch image
        ``j`` (asked only of the ones kept: each number costs a device sync)."""
        for j in indices[scores[indices].topk(min(self.k, len(indices))).indices].tolist():
            self.items.append((float(scores[j]), images[j].float().cpu().clone(), title(j)))
        self.items = sorted(self.items, key=lambda item: -item[0])[: self.k]


class ErrorGallery(L.Callback):
    """During testing, keep the most confident mistakes at the operating threshold:
    missed cracks with the lowest crack probability and false alarms with the highest,
    plus the most confident cracks found. After testing, write

    * ``errors.png``: the missed cracks and false alarms, probability in the title;
    * ``gradcam.png``: the same images and the cracks found, with Grad-CAM maps of the
      crack class over them (captum's LayerGradCam on the backbone's last stage).

    Both also go to TensorBoard. A crack is predicted when probability > threshold; with more
    than two classes a crack is any crack class, and the gallery adds the most confident
    confusions at the most probable class that are no crack mistake (``clean -> stain``).
    """

    def __init__(self, output_dir: str, per_kind: int = 4):
        self.output_dir = Path(output_dir)
        self.per_kind = per_kind

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        kinds = ["missed crack", "false alarm", "crack found"]
        if pl_module.hparams.num_classes > 2:
            kinds.append("confused")
        self._kinds = {name: _TopK(self.per_kind) for name in kinds}

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        probs, targets, images = outputs["probs"], outputs["targets"], batch[0]
        cracks, predicted = pl_module.is_crack(targets) == 1, probs > float(pl_module.threshold)
        kinds = [
            ("missed crack", cracks & ~predicted, -probs),
            ("false alarm", ~cracks & predicted, probs),
            ("crack found", cracks & predicted, probs),
        ]
        if "confused" in self._kinds:  # the wrong class, where cracks vs the rest is right
            confidence, top = pl_module.probabilities(outputs["logits"]).max(dim=-1)
            kinds.append(("confused", (top != targets) & (cracks == predicted), confidence))
        names = trainer.datamodule.class_names

        def caption(kind: str, j: int) -> str:
            if kind == "confused":
                return f"{names[int(targets[j])]} -> {names[int(top[j])]}\nprob {float(confidence[j]):.3f}"
            return f"{kind}\ncrack prob {float(probs[j]):.3f}"

        for name, mask, score in kinds:
            if mask.any():
                self._kinds[name].offer(mask.nonzero().flatten(), score, images, partial(caption, name))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # under DDP each rank kept the top k of its own shard: merge them (k images each)
        for name, top in self._kinds.items():
            for items in gather_objects(top.items)[1:]:
                top.items = sorted(top.items + items, key=lambda item: -item[0])[: top.k]

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        picked = [(name, image, title) for name, top in self._kinds.items() for _, image, title in top.items]
        if not picked:
            return
        images = torch.stack([image for _, image, _ in picked])
        titles = [title for _, _, title in picked]
        colors = ["red" if name != "crack found" else "green" for name, _, _ in picked]
        shown = denormalize(images, dm.mean, dm.std)
        mistakes = [i for i, (name, _, _) in enumerate(picked) if name != "crack found"]
        threshold = float(pl_module.threshold)
        if mistakes:
            fig = image_grid_figure(
                shown[mistakes], [titles[i] for i in mistakes], [colors[i] for i in mistakes],
                suptitle=f"Most confident mistakes at threshold {threshold:.3g}",
            )
            publish_figure(trainer, fig, self.output_dir / "errors.png", "test/errors")
        if getattr(pl_module, "onnxruntime", False):  # an .onnx file's scorer: no layers to take gradients of
            return
        fig = gradcam_figure(pl_module, images, dm.mean, dm.std, titles, colors)
        publish_figure(trainer, fig, self.output_dir / "gradcam.png", "test/gradcam")
