"""The model's metrics (torchmetrics): crack vs the rest on P(any crack class), and with more
than two classes the N-class ones -- top-1 accuracy, macro / weighted averages, per class."""

from __future__ import annotations

import torch
from torchmetrics import MetricCollection, SumMetric
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryAveragePrecision,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.wrappers import ClasswiseWrapper


def crack_metrics(with_acc: bool = True, with_auroc: bool = True) -> MetricCollection:
    """Crack vs the rest, on P(any crack class): precision, recall and F1 are those of cracks
    (with two classes label 1 is the crack class, and these are all the metrics)."""
    metrics = {"acc": BinaryAccuracy()} if with_acc else {}
    metrics.update(precision=BinaryPrecision(), recall=BinaryRecall(), f1=BinaryF1Score())
    if with_auroc:  # threshold-free; average precision is the one that notices imbalance
        metrics["auroc"] = BinaryAUROC()
        metrics["ap"] = BinaryAveragePrecision()
    return MetricCollection(metrics)


def class_metrics(num_classes: int, class_names: list[str] | None, per_class: bool) -> MetricCollection:
    """More than two classes: top-1 accuracy, macro and weighted averages, one-vs-rest AUROC,
    and (``per_class``) precision, recall, F1 and AUROC of each class (``f1/<class>``)."""
    n = num_classes
    metrics = {
        "acc": MulticlassAccuracy(n, average="micro"),
        "macro_precision": MulticlassPrecision(n, average="macro"),
        "macro_recall": MulticlassRecall(n, average="macro"),
        "macro_f1": MulticlassF1Score(n, average="macro"),
        "weighted_f1": MulticlassF1Score(n, average="weighted"),
        "macro_auroc": MulticlassAUROC(n, average="macro"),
    }
    if per_class:
        labels = list(class_names) if class_names else [str(k) for k in range(n)]
        for name, metric in (("precision", MulticlassPrecision), ("recall", MulticlassRecall),
                             ("f1", MulticlassF1Score), ("auroc", MulticlassAUROC)):
            metrics[f"{name}_per_class"] = ClasswiseWrapper(metric(n, average=None), labels=labels, prefix=f"{name}/")
    return MetricCollection(metrics, compute_groups=False)


class Counts(MetricCollection):
    """Named sums (images scored, cracks missed), synchronised like the other metrics."""

    def __init__(self, names: list[str], prefix: str):
        super().__init__({name: SumMetric() for name in names}, prefix=prefix, compute_groups=False)

    def update(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            self[name].update(value)
