"""95 % intervals of the test metrics (:mod:`crack_lightning.evaluation.intervals`)."""

from __future__ import annotations

import math

from crack_lightning.callbacks.domains import ImageResults, PerImageTest
from crack_lightning.evaluation.intervals import metric_intervals
from crack_lightning.evaluation.operating_point import calibration_error


class ConfidenceIntervals(PerImageTest):
    """After the test epoch, a 95 % interval for accuracy, precision, recall, F1, missed cracks (at
    0.5 and at the operating threshold), AUROC and ECE: logged as ``test/<metric>_ci_low`` /
    ``_ci_high`` (so ``metrics.json``, TensorBoard, the report and the sweep summary have them), and
    ``intervals.json`` with the method. Images of one group (the photo of a grouped split, a
    manifest's group) are resampled together: patches of one photo are no independent evidence."""

    def __init__(self, output_dir: str | None = None, draws: int = 1000, n_bins: int = 15, seed: int = 0):
        super().__init__(output_dir)
        self.draws, self.n_bins, self.seed = draws, n_bins, seed

    def evaluate(self, trainer, pl_module, images: ImageResults) -> None:
        cracks = pl_module.is_crack(images.targets)
        binary = pl_module.hparams.num_classes == 2
        correct = ((images.probs > 0.5).long() == cracks) if binary else images.predicted == images.targets
        split_groups = getattr(trainer.datamodule, "split_groups", None)
        groups = split_groups("test") if split_groups else None
        # the point its interval is of
        pl_module.log("test/ece", calibration_error(images.probs, cracks, self.n_bins), sync_dist=False)
        probs, cracks = images.probs.numpy(), cracks.numpy()
        found = metric_intervals(probs, cracks, correct.numpy(), float(pl_module.threshold), groups,
                                 self.n_bins, self.draws, self.seed)
        found = {key: (None, None) if math.isnan(low) else (low, high) for key, (low, high) in found.items()}
        for key, (low, high) in found.items():
            if low is not None:  # undefined (precision with nothing called a crack): not logged
                pl_module.log(f"test/{key}_ci_low", float(low), sync_dist=False)  # the same on every rank
                pl_module.log(f"test/{key}_ci_high", float(high), sync_dist=False)
        method = (f"{len(set(groups))} groups: Wilson with the design effect for proportions, cluster bootstrap "
                  f"for F1, AUROC and ECE" if groups is not None
                  else "Wilson score for proportions, bootstrap over images for F1, AUROC and ECE")
        self.write(trainer, "intervals.json", {"confidence": 0.95, "method": method, "draws": self.draws,
                                               "images": len(probs), "intervals": found})
