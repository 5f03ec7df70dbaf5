"""95 % intervals: they cover the true value about 95 % of the time (seeded simulations of a
known Bernoulli, no training), the cluster bootstrap and the design effect keep that when
images come in correlated groups where image-level intervals do not. A short run shows them in metrics.json, the report and intervals.json."""

from __future__ import annotations

import json

import numpy as np

from crack_lightning.evaluation.intervals import bootstrap, clustered_wilson, wilson
from tests.conftest import compose_cfg


def test_wilson_covers_a_known_rate_at_about_95_percent():
    rng = np.random.default_rng(0)
    p, n = 0.97, 240  # a small test set at a high recall: the case that reads as certainty
    hits = [(lambda lo_hi: lo_hi[0] <= p <= lo_hi[1])(wilson(int(rng.binomial(n, p)), n)) for _ in range(400)]
    assert 0.92 <= np.mean(hits) <= 0.98, np.mean(hits)
    low, high = wilson(238, 240)
    assert high - low > 0.02  # 99.2 % of 240 is not "99.2 % +- nothing"


def test_the_cluster_bootstrap_covers_correlated_groups_where_wilson_does_not():
    """24 photos of 10 patches; each photo has its own rate, so its patches succeed or fail
    together. The true rate is 0.9; an interval that treats the 240 patches as independent is too
    narrow (seeded: Wilson covers 71 % of 150 draws; the cluster bootstrap 93 %, Wilson with the
    design effect 95 %)."""
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(24), 10)
    covered = {"wilson": [], "cluster": [], "design effect": []}
    for _ in range(150):
        rate = rng.beta(1.8, 0.2, 24)  # mean 0.9, strongly varying by photo
        ok = rng.random(240) < rate[groups]
        lo, hi = wilson(int(ok.sum()), len(ok))
        covered["wilson"].append(lo <= 0.9 <= hi)
        lo, hi = bootstrap(lambda i: ok[i].mean(), len(ok), groups, draws=300, seed=2)
        covered["cluster"].append(lo <= 0.9 <= hi)
        lo, hi = clustered_wilson(np.bincount(groups, ok), np.bincount(groups))
        covered["design effect"].append(lo <= 0.9 <= hi)
    assert np.mean(covered["wilson"]) < 0.85, covered
    assert 0.88 <= np.mean(covered["cluster"]) <= 0.99, np.mean(covered["cluster"])
    assert 0.88 <= np.mean(covered["design effect"]) <= 0.99, np.mean(covered["design effect"])
    low, high = clustered_wilson(np.full(60, 2), np.full(60, 2))  # 120 of 120 found: still not certain
    assert high == 1.0 and low < 0.98


def test_a_run_reports_its_intervals(tmp_path, tiny_data):
    from crack_lightning.train import train

    train(compose_cfg(tmp_path, tiny_data, ["backbone=custom_cnn", "callbacks.confidence_intervals.draws=200"]))
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("acc", "recall", "recall_at_threshold", "missed_cracks_at_threshold", "auroc", "ece"):
        low, high = metrics[f"test/{key}_ci_low"], metrics[f"test/{key}_ci_high"]
        assert low <= metrics[f"test/{key}"] + 1e-9 and metrics[f"test/{key}"] <= high + 1e-9, key
    saved = json.loads((run / "intervals.json").read_text())
    assert "groups: Wilson with the design effect" in saved["method"]  # the tiny split is grouped by borders
    assert "95 % interval" in (run / "report.md").read_text()
