"""95 % intervals for test metrics: a 240-image test set at 99 % must not read as certainty.

Proportions (accuracy, precision, recall, the missed-crack rate) get Wilson score intervals --
with the sample size divided by the design effect when images come in groups (patches of one
photo are not independent evidence); F1, AUROC and ECE get percentile bootstrap intervals,
resampling whole groups when there are groups (a cluster bootstrap), images otherwise. The
statistics are the libraries' (scikit-learn's AUROC, our torchmetrics ECE); this module only resamples.

>>> [round(v, 4) for v in wilson(238, 240)]  # 99.2 % of 240
[0.97, 0.9977]
>>> wilson(0, 0)
(0.0, 1.0)
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from crack_lightning.evaluation.operating_point import calibration_error
from crack_lightning.evaluation.proportions import wilson

def bootstrap(statistic: Callable[[np.ndarray], float], n: int, groups=None, draws: int = 1000, seed: int = 0,
              confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``statistic(indices)`` over resamples of the ``n`` images -- of
    whole groups when ``groups`` (one id per image) is given. Draws where the statistic is
    undefined (``nan``: e.g. AUROC of a resample without cracks) are left out."""
    rng = np.random.default_rng(seed)
    if groups is None:
        samples = (rng.integers(0, n, n) for _ in range(draws))
    else:
        ids, inverse = np.unique(np.asarray(groups), return_inverse=True)
        members = [np.flatnonzero(inverse == g) for g in range(len(ids))]
        samples = (np.concatenate([members[g] for g in rng.integers(0, len(ids), len(ids))]) for _ in range(draws))
    values = np.array([statistic(idx) for idx in samples], dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def auroc(probs: np.ndarray, cracks: np.ndarray) -> float:
    """scikit-learn's AUROC; nan for a resample without both classes."""
    return float(roc_auc_score(cracks, probs)) if 0 < cracks.sum() < len(cracks) else float("nan")


def f1(predicted: np.ndarray, cracks: np.ndarray) -> float:
    tp = int((predicted & (cracks == 1)).sum())
    denominator = int(predicted.sum() + cracks.sum())
    return 2 * tp / denominator if denominator else 0.0


def metric_intervals(probs, cracks, correct, threshold: float, groups=None, n_bins: int = 15, draws: int = 1000,
                   seed: int = 0) -> dict[str, tuple[float, float]]:
    """95 % intervals of the headline test metrics, keyed like the metrics (``recall``,
    ``recall_at_threshold``, ...). ``probs``: crack probability per image; ``cracks``: 1 for a
    crack; ``correct``: the image's class was right (accuracy: top-1 with more than two classes)."""
    probs, cracks, correct = np.asarray(probs, float), np.asarray(cracks, int), np.asarray(correct, bool)
    n = len(probs)
    out: dict[str, tuple[float, float]] = {}
    for suffix, t in (("", 0.5), ("_at_threshold", float(threshold))):
        predicted = probs > t
        counts = {  # (successes, trials) of each proportion, as index arrays pick them
            f"precision{suffix}": lambda i, p=predicted: ((p[i] & (cracks[i] == 1)).sum(), p[i].sum()),
            f"recall{suffix}": lambda i, p=predicted: ((p[i] & (cracks[i] == 1)).sum(), (cracks[i] == 1).sum()),
        }
        for key, count in counts.items():
            out[key] = _proportion(count, n, groups)
        out[f"f1{suffix}"] = bootstrap(lambda i, p=predicted: f1(p[i], cracks[i]), n, groups, draws, seed)
        # missed cracks: the count is cracks x the miss rate, whose interval is 1 - recall's
        low, high = out[f"recall{suffix}"]
        out[f"missed_cracks{suffix}"] = (int(cracks.sum()) * (1 - high), int(cracks.sum()) * (1 - low))
    out["acc"] = _proportion(lambda i: (correct[i].sum(), len(i)), n, groups)
    out["auroc"] = bootstrap(lambda i: auroc(probs[i], cracks[i]), n, groups, draws, seed)
    tensors = torch.from_numpy(probs).float(), torch.from_numpy(cracks)  # the ECE of the report and the operating point
    out["ece"] = bootstrap(lambda i: calibration_error(tensors[0][i], tensors[1][i], n_bins), n, groups, draws, seed)
    return out


def clustered_wilson(successes, trials) -> tuple[float, float]:
    """Wilson's interval of ``sum(successes) / sum(trials)`` over groups (one entry each), with
    the sample size divided by the design effect (Kish): the ratio's cluster variance over the
    binomial one, never below 1. Unlike a bootstrap it does not collapse to a point at 0 or
    100 % (120 of 120 cracks found is not certainty)."""
    y, m_g = np.asarray(successes, float), np.asarray(trials, float)
    used = m_g > 0  # groups holding any trial (a photo without cracks adds nothing to recall)
    y, m_g = y[used], m_g[used]
    k, m = y.sum(), m_g.sum()
    if m == 0 or k in (0, m) or len(y) < 2:
        return wilson(k, m)
    p = k / m
    cluster = len(y) / (len(y) - 1) * ((y - p * m_g) ** 2).sum() / m ** 2
    design = max(1.0, cluster / (p * (1 - p) / m))
    return wilson(k / design, m / design)


def _proportion(count: Callable, n: int, groups) -> tuple[float, float]:
    """Wilson's interval of ``count``'s ``(successes, trials)``, clustered when there are groups."""
    if groups is None:
        k, m = count(np.arange(n))
        return wilson(float(k), float(m))
    ids, inverse = np.unique(np.asarray(groups), return_inverse=True)
    per_group = np.array([count(np.flatnonzero(inverse == g)) for g in range(len(ids))], dtype=float)
    return clustered_wilson(per_group[:, 0], per_group[:, 1])
