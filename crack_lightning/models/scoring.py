"""What reading a classifier's logits takes, apart from where the logits come from.

:class:`CrackScorer` is the LightningModule part every scored model shares: the crack classes
(P(crack) is the sum of their probabilities), the operating point (temperature, threshold),
the validation and test metrics, and the test stage the report callbacks read. The trained
:class:`~crack_lightning.models.CrackClassifier` adds a backbone, a head and training to it;
:class:`~crack_lightning.evaluation.scorers.OnnxScorer` gets its logits from an exported
``.onnx`` file -- so ``evaluate.py`` tests either through the same code as training does.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.nn import functional as F
from torchmetrics import MetricCollection

from crack_lightning import CrackLightningError
from crack_lightning.model_card import ModelCard
from crack_lightning.models.metrics import Counts, class_metrics, crack_metrics


def positive_labels(num_classes: int, positive_classes) -> list[int]:
    """The crack classes' labels (default ``[1]`` of two); one line for an impossible set."""
    positive = [1] if positive_classes is None and num_classes == 2 else [int(k) for k in positive_classes or []]
    if not positive or not all(0 <= k < num_classes for k in positive) or len(positive) >= num_classes:
        raise CrackLightningError(f"model.positive_classes={positive_classes}: give the crack classes' labels, "
                                  f"some but not all of 0..{num_classes - 1}.")
    return positive


class CrackScorer(L.LightningModule):
    """Class logits (``forward``, from a subclass) read as crack / no crack and as classes.

    A subclass calls ``save_hyperparameters`` with at least ``num_classes`` (the callbacks read
    ``hparams.num_classes``) and may set ``hparams.label_smoothing``.
    """

    onnxruntime = False  # True: the logits come from onnxruntime, on the CPU, without gradients (no Grad-CAM)

    def __init__(self, num_classes: int, class_names: list[str] | None, positive_classes: list[int] | None,
                 class_weights: list[float] | None = None):
        super().__init__()
        positive = positive_labels(num_classes, positive_classes)
        # not in the state dict: "auto" is made again from the same split when a run resumes, and
        # a checkpoint loads into a model built from its config whichever weights it trained with
        self.register_buffer("class_weight", torch.tensor(class_weights or [1.0] * num_classes), persistent=False)
        # which labels are cracks: P(crack) is the sum of their probabilities (not saved: from the config)
        mask = torch.zeros(num_classes, dtype=torch.bool)
        mask[positive] = True
        self.register_buffer("positive_mask", mask, persistent=False)
        # ("train" cannot be a ModuleDict key: it would shadow nn.Module.train)
        binary = num_classes == 2
        self.train_metrics = crack_metrics(binary).clone(prefix="train/")
        self.val_metrics = crack_metrics(binary).clone(prefix="val/")
        self.test_metrics = crack_metrics(binary).clone(prefix="test/")
        # more classes: top-1 accuracy, macro/weighted averages, per class at test (on the softmax)
        self.class_metrics = torch.nn.ModuleDict() if binary else torch.nn.ModuleDict({
            stage: class_metrics(num_classes, class_names, per_class=stage == "test").clone(prefix=f"{stage}/")
            for stage in ("fit", "val", "test")})
        # the crack metrics at the operating threshold (chosen on validation for a target recall),
        # and the cracks missed at 0.5 and at that threshold
        self.test_metrics_at_threshold = crack_metrics(binary, with_auroc=False).clone(
            prefix="test/", postfix="_at_threshold")
        self.test_counts = Counts(["images", "missed_cracks", "missed_cracks_at_threshold"], prefix="test/")
        # Operating point, fitted after training by callbacks.OperatingPoint and saved in
        # the state dict: crack when P(crack) of softmax(logits / temperature) > threshold.
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("threshold", torch.tensor(0.5))
        # What predict and export need besides the weights (class names, preprocessing, run
        # config, operating points); the threshold and temperature themselves are the buffers above.
        self.card: ModelCard | None = None

    def set_operating_point(self, point: dict) -> None:
        """Read scores at ``point``'s ``threshold`` and ``temperature`` (buffers and card alike)."""
        self.temperature.fill_(float(point["temperature"]))
        self.threshold.fill_(float(point["threshold"]))
        if self.card is not None:
            self.card = self.card.with_operating_point(point)

    def probabilities(self, logits: torch.Tensor, temperature: float | torch.Tensor | None = None) -> torch.Tensor:
        """Calibrated probability of every class (temperature 1 until calibrated)."""
        t = self.temperature if temperature is None else temperature
        return (logits.detach().float() / t).softmax(dim=-1)

    def crack_probability(self, logits: torch.Tensor, temperature: float | torch.Tensor | None = None) -> torch.Tensor:
        """Calibrated probability of a crack: of any crack class when there are more."""
        return self._crack_share(self.probabilities(logits, temperature))

    def _crack_share(self, probs: torch.Tensor) -> torch.Tensor:
        # a product, not probs[:, mask]: boolean indexing waits for the device (nonzero) on every step;
        # with two classes it is exactly probs[:, 1]
        return (probs * self.positive_mask.to(probs.device, probs.dtype)).sum(dim=-1).clamp(0.0, 1.0)

    def is_crack(self, targets: torch.Tensor) -> torch.Tensor:
        """1 where the label is a crack class, else 0 (the crack metrics' target)."""
        return self.positive_mask.to(targets.device)[targets].long()

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, weight=self.class_weight,
                               label_smoothing=self.hparams.get("label_smoothing", 0.0))

    def _step(self, batch, stage: str, batch_idx: int = 0) -> dict[str, torch.Tensor] | None:
        images, targets = batch
        logits = self(images)
        loss = self.loss(logits, targets)
        if stage == "train" and not torch.isfinite(loss):  # the step's one host sync
            return self._nonfinite_loss(loss, batch_idx)  # nothing logged from a broken batch
        class_probs = self.probabilities(logits)
        probs = self._crack_share(class_probs)
        cracks = self.is_crack(targets)
        # updated per batch, logged once per epoch (_log_epoch_metrics): logging the metric objects
        # every step adds Lightning bookkeeping to each step, time a fast GPU step cannot spare
        getattr(self, f"{stage}_metrics").update(probs, cracks)
        if self.class_metrics:
            self.class_metrics["fit" if stage == "train" else stage].update(class_probs, targets)
        # the epoch loss is averaged over the ranks; shards differ by at most one image
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True,
                 batch_size=len(targets), sync_dist=stage != "train")
        if stage == "test":
            self._update_operating_metrics(probs, cracks)
        return {"loss": loss, "probs": probs, "targets": targets, "logits": logits.detach().float()}

    def _nonfinite_loss(self, loss: torch.Tensor, batch_idx: int) -> None:
        raise NotImplementedError  # training is the classifier's

    def _log_epoch_metrics(self, *collections, prog_bar: bool = False) -> None:
        """Compute (synchronised across DDP ranks by torchmetrics), log and reset."""
        for metrics in collections:
            if not any(metric.update_called for metric in metrics.values()):
                continue  # no batch this epoch (e.g. validation switched off)
            # compute() already agrees on every rank; sync_dist only tells Lightning so
            self.log_dict({k: v.float() for k, v in metrics.compute().items()}, prog_bar=prog_bar, sync_dist=True)
            metrics.reset()

    def _stage_metrics(self, stage: str) -> list[MetricCollection]:
        return [self.class_metrics[stage]] if self.class_metrics else []

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics(self.val_metrics, *self._stage_metrics("val"), prog_bar=True)

    def on_test_epoch_start(self) -> None:
        # the threshold is fixed for a test run (loaded with the checkpoint): set it once
        for metric in self.test_metrics_at_threshold.values():
            metric.threshold = float(self.threshold)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics(self.test_metrics, *self._stage_metrics("test"), self.test_metrics_at_threshold,
                                self.test_counts)
        self.log("test/threshold", self.threshold, sync_dist=True)

    def _update_operating_metrics(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        """``targets``: 1 for a crack (any crack class), 0 for the rest."""
        self.test_metrics_at_threshold.update(probs, targets)
        cracks = targets == 1
        # a crack is predicted when probability > threshold (torchmetrics' rule)
        self.test_counts.update({
            "images": torch.tensor(float(len(targets)), device=probs.device),
            "missed_cracks": (cracks & (probs <= 0.5)).sum().float(),
            "missed_cracks_at_threshold": (cracks & (probs <= self.threshold)).sum().float(),
        })

    def validation_step(self, batch, batch_idx: int):
        return self._step(batch, "val")

    def test_step(self, batch, batch_idx: int):
        return self._step(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.crack_probability(self(images))
