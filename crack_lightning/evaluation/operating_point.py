"""Choose how the model's scores are read: a temperature that makes the crack
probability honest, and a threshold that misses few cracks.

Both are fitted on the validation split (never the test split, which only reports
how well the choice holds on unseen images).

The rule everywhere (torchmetrics', so metrics, reports and predictions agree): an
image is a crack when its crack probability is *greater than* the threshold.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F
from torchmetrics.functional.classification import (
    binary_calibration_error,
    binary_precision,
    binary_precision_at_fixed_recall,
    binary_recall,
)

from crack_lightning.evaluation.proportions import wilson


# T outside this range means the validation split cannot tell (a handful of images,
# or all of one class); clamping keeps a degenerate fit from flattening every score.
TEMPERATURE_RANGE = (0.05, 20.0)


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, cracks: torch.Tensor | None = None,
                    max_iter: int = 100) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 minimising the cross-entropy of
    ``logits / T`` over all classes, clamped to ``TEMPERATURE_RANGE``. One parameter, so ranking
    (AUROC) is unchanged; an over-confident model gets T > 1, which pulls its "100 %"
    probabilities back towards what it earns. ``cracks``: 1 where the label is a crack class
    (default: label 1).

    When the scores separate the classes completely, the cross-entropy keeps falling as
    T -> 0 and the split cannot tell what T should be: T stays 1 (no change)."""
    cracks = (targets == 1) if cracks is None else cracks.bool()
    if not cracks.any() or cracks.all():
        return 1.0
    if logits.shape[1] == 2:
        margin = logits[:, 1] - logits[:, 0]
        if margin[~cracks].max() < margin[cracks].min():
            return 1.0
    elif (logits.argmax(dim=1) == targets).all():  # every image right: nothing tells T
        return 1.0
    # callers may sit in Lightning's inference mode: leave it for this small fit
    with torch.inference_mode(False), torch.enable_grad():
        logits, targets = logits.detach().double().clone(), targets.long().clone()
        log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays positive
        optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = F.cross_entropy(logits / log_t.exp(), targets)
            loss.backward()
            return loss

        optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature):
        return 1.0
    return min(max(temperature, TEMPERATURE_RANGE[0]), TEMPERATURE_RANGE[1])


def calibration_error(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error of the crack probability (equal-width bins, L1)."""
    return float(binary_calibration_error(probs.float().contiguous(), targets.long(), n_bins=n_bins, norm="l1"))


@dataclass
class ThresholdChoice:
    threshold: float
    target_recall: float
    precision: float  # on the split it was chosen on, at ``threshold``
    recall: float
    cracks: int       # positives in that split
    confident: bool = False  # the recall's 95 % interval, not only its value, had to reach target_recall

    def to_dict(self) -> dict:
        return asdict(self)


def choose_threshold(probs: torch.Tensor, targets: torch.Tensor, target_recall: float,
                     confident: bool = False) -> ThresholdChoice:
    """The threshold with the best precision among those whose recall on cracks is at
    least ``target_recall`` (a crack is predicted when probability > threshold).

    ``confident``: the lower end of the recall's 95 % (Wilson) interval must reach
    ``target_recall``, so that images not seen here keep it -- a threshold fitted to the
    point estimate on a few dozen cracks misses the target on new ones about half the
    time. When even catching every crack cannot show it, every crack is caught.

    Every threshold between the chosen cut and the next lower score flags the same
    images here; the lowest of them is returned (the score just below the cut), so new
    cracks scoring a little lower than any crack seen in validation are still caught.

    A split without cracks cannot tell: the threshold stays 0.5 (``cracks`` = 0 says so).
    """
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"eval.target_recall={target_recall}: choose a recall in (0, 1].")
    probs, targets = probs.float(), targets.long()
    cracks = int(targets.sum())
    threshold = 0.5
    if cracks:
        found = min((k for k in range(cracks + 1) if wilson(k, cracks)[0] >= target_recall), default=cracks)
        min_recall = found / cracks if confident else target_recall
        _, best = binary_precision_at_fixed_recall(probs, targets, min_recall=min_recall)
        if math.isfinite(float(best)):
            # the curve flags ">= best"; "> the next lower score" flags the same images
            below = probs[probs < best]
            threshold = float(below.max()) if len(below) else 0.0
    precision = float(binary_precision(probs, targets, threshold=threshold))
    recall = float(binary_recall(probs, targets, threshold=threshold))
    return ThresholdChoice(threshold, target_recall, precision, recall, cracks, confident)


def fit_point(scorer, logits: torch.Tensor, targets: torch.Tensor, target_recall: float, calibrate: bool = True,
              n_bins: int = 15, split: str = "val", confident: bool = False) -> dict:
    """The operating point of ``scorer`` (a :class:`~crack_lightning.models.scoring.CrackScorer`)
    fitted on these images' ``logits`` and class labels: the temperature (``calibrate``), then the
    threshold with the best precision at crack recall >= ``target_recall`` (``confident``: at
    the lower end of its 95 % interval, see :func:`choose_threshold`); with the calibration
    error before and after, and in ``warnings`` what makes it untrustworthy."""
    temperature = fit_temperature(logits, targets, scorer.is_crack(targets)) if calibrate else 1.0
    raw = scorer.crack_probability(logits, 1.0)  # P(any crack class), before and after calibration
    probs = scorer.crack_probability(logits, temperature)
    cracks = scorer.is_crack(targets)  # the threshold and ECE are those of cracks vs the rest
    choice = choose_threshold(probs, cracks, target_recall, confident)
    return {
        "temperature": temperature,
        **choice.to_dict(),
        "images": len(cracks),
        "ece_before": calibration_error(raw, cracks, n_bins),
        "ece_after": calibration_error(probs, cracks, n_bins),
        "split": split,
        "rule": "crack when crack probability > threshold",
        "warnings": degenerate(temperature, choice, probs, cracks, "validation" if split == "val" else split),
        "scores": split_scores(probs, cracks),
    }


MAX_SCORES = 2000  # per side: at most ~40 kB of JSON in the card; more are kept as evenly spaced quantiles


def split_scores(probs: torch.Tensor, cracks: torch.Tensor) -> dict:
    """The split's calibrated crack probabilities of cracks and of the rest, sorted (6 digits), so
    that what any other threshold implies there can be read from the card (:func:`at_threshold`)
    without the images: the app's threshold control."""
    def side(values: torch.Tensor) -> list[float]:
        values = values.float().sort().values
        if len(values) > MAX_SCORES:
            values = values[torch.linspace(0, len(values) - 1, MAX_SCORES).round().long()]
        return [round(float(v), 6) for v in values]
    cracks = cracks.bool()
    return {"crack": side(probs[cracks]), "other": side(probs[~cracks]),
            "cracks": int(cracks.sum()), "others": int((~cracks).sum())}


def at_threshold(scores: dict, threshold: float) -> dict:
    """Recall, precision, missed cracks and false alarms on the split of ``scores``
    (:func:`split_scores`) at ``threshold`` (crack when probability > threshold); counts scaled
    to the split's size when only quantiles are stored.

    >>> at_threshold({"crack": [0.2, 0.6, 0.9], "other": [0.1, 0.3, 0.7], "cracks": 3, "others": 3}, 0.5)
    {'threshold': 0.5, 'recall': 0.666667, 'precision': 0.666667, 'missed_cracks': 1, 'false_alarms': 1, 'cracks': 3, 'others': 3}
    """
    def above(values: list[float], total: int) -> int:
        return round((len(values) - bisect.bisect_right(values, threshold)) * total / max(len(values), 1))
    caught, alarms = above(scores["crack"], scores["cracks"]), above(scores["other"], scores["others"])
    return {"threshold": threshold,
            "recall": round(caught / scores["cracks"], 6) if scores["cracks"] else float("nan"),
            "precision": round(caught / (caught + alarms), 6) if caught + alarms else float("nan"),
            "missed_cracks": scores["cracks"] - caught, "false_alarms": alarms,
            "cracks": scores["cracks"], "others": scores["others"]}


def cracks_needed(target_recall: float, confident: bool = False) -> int | None:
    """The fewest cracks that can show a recall of ``target_recall``: below 1 / (1 - target), one
    missed crack already puts the recall under it, so the threshold can only be "catch every one";
    ``confident``: the fewest whose 95 % interval reaches it when every crack is caught (None: no
    number of cracks can, for a target of 1).

    >>> cracks_needed(0.99), cracks_needed(0.9), cracks_needed(1.0), cracks_needed(0.9, confident=True)
    (100, 10, 0, 35)
    """
    if confident:
        return None if target_recall >= 1 else next(n for n in range(1, 10**6) if wilson(n, n)[0] >= target_recall)
    return 0 if target_recall >= 1 else math.ceil(1 / (1 - target_recall) - 1e-9)


def degenerate(temperature: float, choice: ThresholdChoice, probs: torch.Tensor, targets: torch.Tensor,
               split: str = "validation") -> list[str]:
    """What makes an operating point untrustworthy, in words (none for a sound one): a
    temperature stuck at its clamp, or a threshold that calls every validation image a crack
    (recall 1 bought by giving up: the model does not separate the classes there)."""
    problems = []
    needed = cracks_needed(choice.target_recall, choice.confident)
    if choice.cracks and (needed is None or choice.cracks < needed):
        why = (f"with {f'fewer than {needed}' if needed else 'any number of'} cracks its 95 % interval stays below "
               f"it even when all are caught" if choice.confident else f"below {needed} cracks one miss breaks it")
        problems.append(f"only {choice.cracks} cracks to choose the threshold on: recall >= {choice.target_recall:g} "
                        f"is not supported ({why}), so the threshold just catches every crack seen; label more "
                        f"cracks, or read the recall's interval")
    if temperature in TEMPERATURE_RANGE:
        problems.append(f"the temperature hit its limit {temperature:g}: the {split} images cannot pin it "
                        f"down (too few images, or scores that do not separate the classes)")
    negatives = targets == 0
    if choice.cracks and negatives.any() and bool((probs[negatives] > choice.threshold).all()):
        problems.append(f"the threshold {choice.threshold:.4g} flags every {split} image as a crack "
                        f"(precision {choice.precision:.3f} = the crack share): the model does not separate "
                        f"the classes there; train longer or on more data before trusting it")
    return problems


def at_prevalence(probs: torch.Tensor, targets: torch.Tensor, threshold: float, prevalence: float) -> dict[str, float]:
    """What a threshold gives where cracks are ``prevalence`` of the images (a site, not the
    test split, whose crack share is often a balanced 50 %): the split's crack recall (TPR)
    and false-alarm rate (FPR) carried to that rate by Bayes' rule.

    >>> at_prevalence(torch.tensor([0.9, 0.8, 0.2, 0.6]), torch.tensor([1, 1, 0, 0]), 0.5, 0.1)  # doctest: +ELLIPSIS
    {'precision': 0.1818..., 'false_alarms_per_1000': 450.0, 'missed_cracks_per_1000': 0.0}
    """
    if not 0.0 < prevalence < 1.0:
        raise ValueError(f"eval.prevalence={prevalence}: choose a crack rate in (0, 1).")
    predicted, cracks = probs.float() > threshold, targets.bool()
    tpr = float(predicted[cracks].float().mean()) if cracks.any() else float("nan")
    fpr = float(predicted[~cracks].float().mean()) if (~cracks).any() else float("nan")
    flagged = tpr * prevalence + fpr * (1 - prevalence)
    return {
        "precision": tpr * prevalence / flagged if flagged > 0 else float("nan"),
        "false_alarms_per_1000": 1000 * fpr * (1 - prevalence),
        "missed_cracks_per_1000": 1000 * (1 - tpr) * prevalence,
    }
