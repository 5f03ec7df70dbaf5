"""Callbacks that turn a run into pictures and reports, in TensorBoard and the run folder."""

from __future__ import annotations

import csv
import io
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
    confusion_table,
    curves_figure,
    denormalize,
    image_grid_figure,
    reliability_figure,
    render_figure,
    save_pixels,
)


def crack_sides(names: list[str], positive_mask: torch.Tensor) -> list[str]:
    """``[the rest, the crack classes]`` as two names, e.g. ``["clean + stain", "crack"]``
    (with two classes the class names themselves)."""
    mask = positive_mask.tolist()
    return [" + ".join(name for name, crack in zip(names, mask) if crack == side) for side in (False, True)]


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

    More than two classes: the crack parts (threshold, ECE, curves, reliability, prevalence)
    are P(any crack class) against the rest; the report first lists every class at the most
    probable class (per-class, macro and weighted precision, recall, F1, and the confusion
    matrix, also written as ``confusion_matrix.csv``); ``confusion_matrix.png`` and
    ``test_predictions.png`` show the most probable class.
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
        self._top: list[torch.Tensor] = []  # the most probable class
        self._images: list[torch.Tensor] = []  # a small pool to pick the grid from

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._probs.append(outputs["probs"].cpu())
        self._raw.append(pl_module.crack_probability(outputs["logits"], 1.0).cpu())
        self._targets.append(outputs["targets"].cpu())
        self._top.append(outputs["logits"].argmax(dim=-1).cpu())
        if sum(len(x) for x in self._images) < 4 * self.num_images:
            self._images.append(batch[0][: 4 * self.num_images].float().cpu())

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # under DDP each rank scored its own shard: gather the whole split (rank 0's
        # images come first, so its image pool still lines up with the probabilities)
        self._split = tuple(gather_uneven(torch.cat(parts), pl_module.device).cpu()
                            for parts in (self._probs, self._raw, self._targets, self._top))
        self._site = {}  # threshold -> what it gives at eval.prevalence: logged here, reported in on_test_end
        if self.prevalence is not None:  # the same gathered split on every rank: the same values
            probs, cracks = self._split[0], pl_module.is_crack(self._split[2])
            for suffix, threshold in (("", 0.5), ("_at_threshold", float(pl_module.threshold))):
                self._site[threshold] = at_prevalence(probs, cracks, threshold, self.prevalence)
                for name, value in self._site[threshold].items():
                    pl_module.log(f"test/{name}_at_prevalence{suffix}", value, sync_dist=True)  # equal on every rank

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        names = dm.class_names
        probs, raw, targets, top = self._split
        cracks, binary = pl_module.is_crack(targets), len(names) == 2
        threshold = float(pl_module.threshold)
        thresholds = {"default": 0.5, "operating": threshold}
        table = None if binary else confusion_table(targets.numpy(), top.numpy(), names)
        if table:
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerows(table)
            write_atomic(self.output_dir / "confusion_matrix.csv", buffer.getvalue())
        classes = [] if binary else self._classes_report(targets, top, names, table)
        write_atomic(self.output_dir / "classification_report.txt",
                     self._report(probs, raw, cracks, crack_sides(names, pl_module.positive_mask.cpu()), thresholds,
                                  pl_module.card.operating_point, classes))
        y, p = cracks.numpy(), probs.numpy()
        # two classes: crack or not at the threshold; more: the most probable class against the label
        preds, truth = ((probs > threshold).long(), cracks) if binary else (top, targets)
        title = "Confusion matrix (test)" if binary else "Confusion matrix (test, most probable class)"
        figures = {
            "confusion_matrix": confusion_matrix_figure(truth.numpy(), preds.numpy(), names, title),
            "pr_roc_curves": curves_figure(y, p, thresholds),
            "reliability_diagram": reliability_figure(
                y, {"before scaling": raw.numpy(), f"after (T={float(pl_module.temperature):.2f})": p}, self.n_bins
            ),
            "test_predictions": self._prediction_grid(torch.cat(self._images), probs, preds, targets, names,
                                                      dm.mean, dm.std, binary),
        }
        for name, fig in figures.items():
            publish_figure(trainer, fig, self.output_dir / f"{name}.png", f"test/{name.removeprefix('test_')}")

    @staticmethod
    def _classes_report(targets, top, names, table: list[list[str]]) -> list[str]:
        """The report's lines on every class at the most probable class (more than two classes)."""
        report = classification_report(targets.numpy(), top.numpy(), labels=list(range(len(names))),
                                       target_names=names, digits=4, zero_division=0)
        widths = [max(len(row[k]) for row in table) for k in range(len(table[0]))]
        matrix = ["  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])])
                  for row in table]
        return ["", "Every class, at the most probable class:", report,
                "Confusion matrix (rows: true class, columns: most probable class):", *matrix,
                "", "Crack vs the rest, on the crack probability:"]

    def _report(self, probs, raw, targets, names, thresholds: dict, point: dict, classes: list[str] = ()) -> str:
        """``targets``: 1 for a crack, 0 for the rest; ``names``: ``[the rest, crack]``;
        ``classes``: the N-class lines (none with two classes)."""
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
        lines += classes
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

    def _prediction_grid(self, images, probs, preds, targets, names, mean, std, binary: bool = True) -> Figure:
        pool = len(images)
        wrong = (preds[:pool] != targets[:pool]).nonzero().flatten().tolist()
        right = (preds[:pool] == targets[:pool]).nonzero().flatten().tolist()
        chosen = (wrong + right)[: self.num_images]
        titles = [  # the number is the crack probability; with more classes, say so
            f"pred {names[preds[i]]} ({'' if binary else 'crack '}{probs[i]:.2f})\ntrue {names[targets[i]]}"
            for i in chosen
        ]
        colors = ["red" if preds[i] != targets[i] else "green" for i in chosen]
        return image_grid_figure(
            denormalize(images[chosen], mean, std), titles, colors,
            suptitle="Test predictions: crack probability, mistakes first (red)",
        )
