"""``shift.md`` of a ``make shift-demo`` folder: how the model did on each surface at its own
threshold and at the surface's recalibrated one, with 95 % intervals.

The folder holds ``train/`` (a run with ``eval.test_sets``), and per surface ``recalibrate_<s>/``
(``recalibration.json``) and ``evaluate_<s>/`` (``evaluate.py`` on the surface's other images at
its operating point). Only what those files say is shown.
"""

from __future__ import annotations

import json
from pathlib import Path

from crack_lightning import CrackLightningError
from crack_lightning.utils.files import write_atomic

SHIFT_MD = "shift.md"


def _cell(metrics: dict, prefix: str, key: str) -> str:
    value = metrics.get(prefix + key)
    if value is None:
        return ""
    low, high = metrics.get(f"{prefix}{key}_ci_low"), metrics.get(f"{prefix}{key}_ci_high")
    return f"{value:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else "")


def _count(metrics: dict, prefix: str, key: str) -> str:
    value = metrics.get(prefix + key)
    return "" if value is None else str(int(round(value)))


def shift_table(folder: Path) -> str:
    """The Markdown table of ``folder`` (see the module doc)."""
    folder = Path(folder)
    train_metrics = folder / "train" / "metrics.json"
    if not train_metrics.is_file():
        raise CrackLightningError(f"{folder}: no train/metrics.json; give the folder make shift-demo wrote.")
    trained = json.loads(train_metrics.read_text())
    sites = sorted({k.split("/")[1] for k in trained if k.startswith("test_sets/")})
    lines = [f"Trained on `{trained.get('train_domain', 'in-domain')}`; recall, precision and missed cracks at the "
             f"threshold, `value [95 % interval]`.", "",
             "| tested on | images | AUROC | recall at the model's threshold | precision | missed | recalibrated on "
             "| threshold | recall on the other images | precision | missed |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = [("test/", trained.get("train_domain", "own test split") + " (own test split)", None)]
    rows += [(f"test_sets/{s}/", s, s) for s in sites]
    for prefix, label, site in rows:
        cells = [label, _count(trained, prefix, "images"), _cell(trained, prefix, "auroc"),
                 _cell(trained, prefix, "recall_at_threshold"),
                 _cell(trained, prefix, "precision_at_threshold"), _count(trained, prefix, "missed_cracks_at_threshold")]
        recal, after = folder / f"recalibrate_{site}" / "recalibration.json", folder / f"evaluate_{site}" / "metrics.json"
        if site and recal.is_file() and after.is_file():
            fitted, tested = json.loads(recal.read_text()), json.loads(after.read_text())
            cells += [f"{fitted['images']} images ({fitted['cracks']} cracks), recall >= {fitted['target_recall']:g}",
                      f"{tested['test/threshold']:.4g}", _cell(tested, "test/", "recall_at_threshold"),
                      _cell(tested, "test/", "precision_at_threshold"),
                      _count(tested, "test/", "missed_cracks_at_threshold")]
        else:
            cells += [""] * 5
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    write_atomic(folder / SHIFT_MD, text)
    return text
