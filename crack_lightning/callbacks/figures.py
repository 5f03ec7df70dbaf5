"""Callbacks that turn a run into pictures and reports, in TensorBoard and the run folder."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.figure import Figure
from sklearn.metrics import classification_report

from crack_lightning.evaluation import at_prevalence, calibration_error
from crack_lightning.utils.files import write_atomic
from crack_lightning.trainer.distributed import gather_uneven
from crack_lightning.reports.plots import (
    confusion_matrix_figure,
    curves_figure,
    denormalize,
    image_grid_figure,
    reliability_figure,
    render_figure,
    save_pixels,
)


def publish_figure(trainer: L.Trainer, fig: Figure, path: Path, tag: str) -> None:
    """Draw ``fig`` once: the PNG at ``path`` and the same pixels under ``tag`` in every
    TensorBoard logger of ``trainer``."""
    pixels = render_figure(fig)
    save_pixels(pixels, path)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, pixels, global_step=trainer.global_step, dataformats="HWC")


class AugmentationPreview(L.Callback):
    """At the start of training, show what the model sees: augmented training images.

    Writes ``augmentation_preview.png`` to ``output_dir`` and the same grid to TensorBoard
    under ``train/augmentation_preview``. The images are drawn with a fixed generator,
    so the preview does not disturb the training data order.
    """

    def __init__(self, output_dir: str, num_images: int = 16, seed: int = 0):
        self.output_dir = Path(output_dir)
        self.num_images = num_images
        self.seed = seed

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        generator = torch.Generator().manual_seed(self.seed)
        indices = torch.randperm(len(dm.train_dataset), generator=generator)[: self.num_images].tolist()
        rng_state = torch.get_rng_state()  # random transforms use the global RNG; leave it as found
        images, labels = dm.preview_batch(indices)
        torch.set_rng_state(rng_state)
        images = denormalize(images, dm.mean, dm.std)
        titles = [dm.class_names[label] for label in labels]
        fig = image_grid_figure(images, titles, suptitle="Augmented training images")
        publish_figure(trainer, fig, self.output_dir / "augmentation_preview.png", "train/augmentation_preview")


class TestReport(L.Callback):
    """After testing, write the human-readable results of the test split.

    Files in ``output_dir``: ``classification_report.txt`` (per-class precision, recall,
    F1, support and missed cracks at 0.5 and at the model's operating threshold, ECE
    before/after calibration), ``confusion_matrix.png`` (at the operating threshold),
    ``pr_roc_curves.png`` (both thresholds marked), ``reliability_diagram.png`` (before
    and after temperature scaling) and ``test_predictions.png`` (test images with
    predicted and true labels, mistakes first, in red). The figures also go to
    TensorBoard. A crack is predicted when its probability is > the threshold. With a
    ``prevalence`` (``eval.prevalence``, the crack rate where the model will work), the report
    and the test metrics (``test/precision_at_prevalence``, ``test/false_alarms_per_1000_at_prevalence``,
    ``test/missed_cracks_per_1000_at_prevalence``, each also ``..._at_threshold``) say what both
    thresholds give at that rate.
    """

    def __init__(self, output_dir: str, num_images: int = 16, n_bins: int = 15, prevalence: float | None = None):
        self.output_dir = Path(output_dir)
        self.num_images = num_images
        self.n_bins = n_bins
        self.prevalence = prevalence  # eval.prevalence: the crack rate where the model will work
        self._site: dict[float, dict] = {}

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._probs: list[torch.Tensor] = []
        self._raw: list[torch.Tensor] = []  # before temperature scaling
        self._targets: list[torch.Tensor] = []
        self._images: list[torch.Tensor] = []  # a small pool to pick the grid from

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._probs.append(outputs["probs"].cpu())
        self._raw.append(outputs["logits"].softmax(dim=-1)[:, 1].cpu())
        self._targets.append(outputs["targets"].cpu())
        if sum(len(x) for x in self._images) < 4 * self.num_images:
            self._images.append(batch[0][: 4 * self.num_images].float().cpu())

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # under DDP each rank scored its own shard: gather the whole split (rank 0's
        # images come first, so its image pool still lines up with the probabilities)
        self._split = tuple(
            gather_uneven(torch.cat(parts), pl_module.device).cpu() for parts in (self._probs, self._raw, self._targets)
        )
        self._site = {}  # threshold -> what it gives at eval.prevalence: logged here, reported in on_test_end
        if self.prevalence is not None:  # the same gathered split on every rank: the same values
            probs, _, targets = self._split
            for suffix, threshold in (("", 0.5), ("_at_threshold", float(pl_module.threshold))):
                self._site[threshold] = at_prevalence(probs, targets, threshold, self.prevalence)
                for name, value in self._site[threshold].items():
                    pl_module.log(f"test/{name}_at_prevalence{suffix}", value, sync_dist=True)  # equal on every rank

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        names = dm.class_names
        probs, raw, targets = self._split
        threshold = float(pl_module.threshold)
        thresholds = {"default": 0.5, "operating": threshold}
        write_atomic(self.output_dir / "classification_report.txt",
                     self._report(probs, raw, targets, names, thresholds, pl_module.card.operating_point))
        y, p = targets.numpy(), probs.numpy()
        preds = (probs > threshold).long()
        figures = {
            "confusion_matrix": confusion_matrix_figure(y, preds.numpy(), names),
            "pr_roc_curves": curves_figure(y, p, thresholds),
            "reliability_diagram": reliability_figure(
                y, {"before scaling": raw.numpy(), f"after (T={float(pl_module.temperature):.2f})": p}, self.n_bins
            ),
            "test_predictions": self._prediction_grid(torch.cat(self._images), probs, preds, targets, names, dm.mean, dm.std),
        }
        for name, fig in figures.items():
            publish_figure(trainer, fig, self.output_dir / f"{name}.png", f"test/{name.removeprefix('test_')}")

    def _report(self, probs, raw, targets, names, thresholds: dict, point: dict) -> str:
        y = targets.numpy()
        lines = [f"Test split, {len(targets)} images ({int(y.sum())} cracks), crack class = {names[1]}."]
        if point.get("target_recall") is not None:
            lines.append(
                f"Operating threshold {thresholds['operating']:.4g}: chosen on {point.get('images')} validation images "
                f"for recall >= {point['target_recall']} (there: precision {point['precision']:.4f}, recall {point['recall']:.4f})."
            )
            lines += [f"WARNING: {problem}." for problem in point.get("warnings", [])]
        lines.append(
            f"Calibration error (ECE, {self.n_bins} bins): {calibration_error(raw, targets, self.n_bins):.4f} before, "
            f"{calibration_error(probs, targets, self.n_bins):.4f} after temperature scaling."
        )
        for label, threshold in thresholds.items():
            preds = (probs > threshold).long().numpy()
            missed, false_alarms = int(((preds == 0) & (y == 1)).sum()), int(((preds == 1) & (y == 0)).sum())
            report = classification_report(y, preds, labels=[0, 1], target_names=names, digits=4, zero_division=0)
            lines += ["", f"At the {label} threshold {threshold:.4g}: {missed} missed cracks, {false_alarms} false alarms", report]
            if threshold in self._site:
                site = self._site[threshold]
                lines.append(
                    f"Where {self.prevalence:.3g} of the images are cracks (eval.prevalence): precision "
                    f"{site['precision']:.4f}, {site['false_alarms_per_1000']:.1f} false alarms and "
                    f"{site['missed_cracks_per_1000']:.1f} missed cracks per 1,000 images.")
        return "\n".join(lines) + "\n"

    def _prediction_grid(self, images, probs, preds, targets, names, mean, std) -> Figure:
        pool = len(images)
        wrong = (preds[:pool] != targets[:pool]).nonzero().flatten().tolist()
        right = (preds[:pool] == targets[:pool]).nonzero().flatten().tolist()
        chosen = (wrong + right)[: self.num_images]
        titles = [
            f"pred {names[preds[i]]} ({probs[i]:.2f})\ntrue {names[targets[i]]}" for i in chosen
        ]
        colors = ["red" if preds[i] != targets[i] else "green" for i in chosen]
        return image_grid_figure(
            denormalize(images[chosen], mean, std), titles, colors,
            suptitle="Test predictions: crack probability, mistakes first (red)",
        )
