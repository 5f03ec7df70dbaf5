"""The operating point (temperature, recall-targeted threshold) and Grad-CAM."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from crack_lightning.data.augmentation import eval_transform
from crack_lightning.evaluation import calibration_error, choose_threshold, fit_temperature
from crack_lightning.evaluation.gradcam import gradcam
from crack_lightning.data.splits import read_splits
from crack_lightning.inference import load_classifier
from crack_lightning.inference.checkpoint import read_checkpoint
from tests.conftest import compose_cfg


def scores(n: int = 4000, separation: float = 1.0, seed: int = 0):
    """Labels and calibrated two-class logits of a model that is right ~75 % of the time:
    the score is +-separation plus N(0, 1.5^2) noise, so the true log-odds are
    2 * separation * score / 1.5^2."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 2, (n,), generator=g)
    score = (2 * targets - 1) * separation + torch.randn(n, generator=g) * 1.5
    log_odds = 2 * separation * score / 1.5**2
    return torch.stack([-log_odds / 2, log_odds / 2], dim=1), targets


@pytest.mark.parametrize("target_recall", [0.9, 0.95, 0.99, 1.0])
def test_threshold_reaches_the_target_recall_with_the_best_precision(target_recall):
    logits, targets = scores()
    probs = logits.softmax(dim=1)[:, 1]
    choice = choose_threshold(probs, targets, target_recall)
    predicted = probs > choice.threshold  # the rule: crack when probability > threshold
    cracks = targets == 1
    recall = (predicted & cracks).sum().item() / cracks.sum().item()
    assert recall >= target_recall
    assert choice.recall == pytest.approx(recall)
    assert choice.threshold < 0.5  # a 0.99 recall on a weak model needs a low threshold
    # brute force over every cut of the ranking: none reaching the target is more precise
    order = probs.argsort(descending=True)
    true_positives = cracks[order].double().cumsum(0)
    flagged = torch.arange(1, len(probs) + 1, dtype=torch.float64)
    feasible = true_positives / cracks.sum() >= target_recall - 1e-9
    best_precision = float((true_positives / flagged)[feasible].max())
    assert choice.precision == pytest.approx(best_precision, abs=1e-6)
    # the lowest threshold giving that cut: it is a score, and the next score up is flagged
    assert choice.threshold in probs.tolist()
    assert choice.threshold == float(probs[probs <= choice.threshold].max())


def test_separable_validation_keeps_temperature_one_and_the_lowest_clean_threshold():
    targets = torch.tensor([0, 0, 0, 1, 1, 1])
    margin = torch.tensor([-4.0, -3.0, -1.0, 2.0, 3.0, 5.0])  # every crack above every non-crack
    logits = torch.stack([-margin / 2, margin / 2], dim=1)
    assert fit_temperature(logits, targets) == 1.0  # cross-entropy falls forever as T -> 0
    probs = logits.softmax(dim=1)[:, 1]
    choice = choose_threshold(probs, targets, 0.99)
    assert choice.threshold == pytest.approx(float(probs[2]))  # the highest non-crack, not the lowest crack
    assert choice.precision == 1.0 and choice.recall == 1.0


def test_threshold_without_cracks_stays_at_half():
    logits, targets = scores()
    choice = choose_threshold(logits.softmax(dim=1)[:, 1], torch.zeros_like(targets), 0.99)
    assert choice.threshold == 0.5 and choice.cracks == 0


def test_temperature_scaling_lowers_ece_of_an_overconfident_model():
    logits, targets = scores()
    overconfident = logits * 5  # same ranking, far too sure
    before = calibration_error(overconfident.softmax(dim=1)[:, 1], targets)
    temperature = fit_temperature(overconfident, targets)
    after = calibration_error((overconfident / temperature).softmax(dim=1)[:, 1], targets)
    assert temperature == pytest.approx(5.0, rel=0.15)  # it undoes the scaling
    assert before > 0.15 and after < 0.03 and after < before / 5
    # an honest model is left about alone
    assert fit_temperature(logits, targets) == pytest.approx(1.0, abs=0.15)


def test_training_stores_the_operating_point_chosen_on_validation(trained_run):
    point = json.loads((trained_run / "operating_point.json").read_text())
    loaded = load_classifier(trained_run / "checkpoints" / "best.ckpt")
    card = loaded.card
    assert card.threshold == pytest.approx(point["threshold"])
    assert card.temperature == pytest.approx(point["temperature"])
    assert card.operating_point == point
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["test/threshold"] == pytest.approx(point["threshold"])
    # recompute on the validation images: the stored threshold reaches the target recall
    data_root = Path(read_checkpoint(loaded.path)["crack_lightning"]["config"]["data"]["root"])
    val = read_splits(trained_run / "splits.csv", data_root, card.class_names)["val"]
    transform = eval_transform(card.preprocessing.to_timm_data_config())
    images = torch.stack([transform(Image.open(s.path).convert("RGB")) for s in val])
    labels = torch.tensor([s.label for s in val])
    with torch.inference_mode():
        probs = loaded.model.crack_probability(loaded.model(images))
    cracks = labels == 1
    assert int(cracks.sum()) == point["cracks"] > 0
    assert float(((probs > card.threshold) & cracks).sum() / cracks.sum()) >= point["target_recall"]
    report = (trained_run / "classification_report.txt").read_text()
    assert "At the default threshold 0.5" in report and "At the operating threshold" in report
    assert f"chosen on {point['images']} validation images for recall >= {point['target_recall']}" in report
    assert "missed cracks" in report and "before" in report and "after temperature scaling" in report


class DarknessNet(nn.Module):
    """A 'crack detector' whose crack logit is the mean darkness: evidence is where it is dark."""

    def __init__(self):
        super().__init__()
        conv = nn.Conv2d(3, 4, 1, bias=False)
        nn.init.constant_(conv.weight, -1.0)
        self.backbone = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[-1.0] * 4, [1.0] * 4]))
            self.head.bias.zero_()


def test_gradcam_points_at_the_evidence():
    images = torch.full((2, 3, 32, 32), 0.5)
    images[0, :, 4:12, 20:28] = -2.0  # a dark square in the first image
    images[1, :, 20:30, 2:10] = -2.0
    maps = gradcam(DarknessNet(), images)
    assert maps.shape == (2, 32, 32) and float(maps.min()) >= 0 and float(maps.max()) <= 1
    assert maps[0, 4:12, 20:28].mean() > 0.9 and maps[0, 20:, :12].mean() < 0.1
    assert maps[1, 20:30, 2:10].mean() > 0.9 and maps[1, :12, 20:].mean() < 0.1


class _RunsCode:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['PWNED_FILE'], 'w').write('ran')",))


def test_a_checkpoint_that_runs_code_is_refused(tmp_path, monkeypatch):
    from crack_lightning import CrackLightningError

    marker = tmp_path / "pwned"
    monkeypatch.setenv("PWNED_FILE", str(marker))
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "crack_lightning": {"config": _RunsCode(), "preprocessing": {}}}, evil)
    with pytest.raises(CrackLightningError, match="refused"):
        load_classifier(evil)
    assert not marker.exists()


def test_the_test_split_read_at_the_sites_crack_rate(tmp_path, tiny_data):
    """eval.prevalence: the test split's recall and false-alarm rate carried to a 5 % crack rate, in
    metrics.json (both thresholds) and in the report."""
    from crack_lightning.train import train

    train(compose_cfg(tmp_path, tiny_data, ["backbone=custom_cnn", "eval.prevalence=0.05"]))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for suffix, recall in (("", "test/recall"), ("_at_threshold", "test/recall_at_threshold")):
        missed = metrics[f"test/missed_cracks_per_1000_at_prevalence{suffix}"]
        assert missed == pytest.approx(1000 * (1 - metrics[recall]) * 0.05, abs=1e-3)
        alarms = metrics[f"test/false_alarms_per_1000_at_prevalence{suffix}"]
        precision = metrics[f"test/precision_at_prevalence{suffix}"]
        assert 0 <= alarms <= 950 and (0 <= precision <= 1 or math.isnan(precision))  # NaN: nothing flagged
    report = (tmp_path / "run" / "classification_report.txt").read_text()
    assert report.count("Where 0.05 of the images are cracks (eval.prevalence): precision") == 2

