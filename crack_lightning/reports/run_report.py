"""``report.md`` of one run folder: the config in brief, the test metrics and the figures.

Readable on GitHub or any Markdown viewer (figures are relative links), so a run
folder can be shared or committed without TensorBoard. Called once at the end of
:func:`crack_lightning.train.train`; only rank 0 writes.
"""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from crack_lightning.utils.files import write_atomic

REPORT = "report.md"
# (file, heading) in the order they are shown; only the ones in the folder are embedded
FIGURES = (
    ("confusion_matrix.png", "Confusion matrix"),
    ("pr_roc_curves.png", "Precision-recall and ROC curves"),
    ("reliability_diagram.png", "Reliability diagram (calibration)"),
    ("errors.png", "Misclassified test images"),
    ("gradcam.png", "Grad-CAM"),
    ("test_predictions.png", "Test predictions"),
    ("augmentation_preview.png", "Augmentation preview"),
)
# metrics listed first, with a plain-words name; the other test/* metrics follow
KEY_METRICS = (
    ("test/threshold", "operating threshold (crack when probability > threshold)"),
    ("test/missed_cracks_at_threshold", "missed cracks at the threshold"),
    ("test/recall_at_threshold", "recall at the threshold"),
    ("test/precision_at_threshold", "precision at the threshold"),
    ("test/acc_at_threshold", "accuracy at the threshold"),
    ("test/f1_at_threshold", "F1 at the threshold"),
)
# more than two classes: the crack metrics are cracks vs the rest, and a table has every class
CLASS_KEY_METRICS = (
    ("test/acc", "accuracy over all classes, at the most probable class"),
    ("test/macro_f1", "F1 averaged over the classes"),
    *((f"test/{name}", f"{label} of cracks vs the rest") for name, label in (
        ("precision", "precision"), ("recall", "recall"), ("f1", "F1"), ("auroc", "AUROC"), ("ap", "average precision"))),
)
CI = ("_ci_low", "_ci_high")  # test/<metric>_ci_low / _ci_high: callbacks/intervals.py
PER_CLASS = ("precision", "recall", "f1", "auroc")  # test/<metric>/<class>, the table's columns
AVERAGES = (("macro average", ("macro_precision", "macro_recall", "macro_f1", "macro_auroc")),
            ("weighted average", (None, None, "weighted_f1", None)))
# eval.test_sets: the best checkpoint on each named test set, test_sets/<name>/<metric> (the names of
# test/), and "train_domain" (a string); the "Across domains" table has these columns
TEST_SETS = "test_sets/"
DOMAIN_COLUMNS = (("images", "images"), ("recall_at_threshold", "recall at threshold"),
                  ("precision_at_threshold", "precision at threshold"), ("f1_at_threshold", "F1 at threshold"),
                  ("auroc", "AUROC"), ("missed_cracks_at_threshold", "missed cracks at threshold"))


def _select(cfg: DictConfig, key: str):
    try:
        return OmegaConf.select(cfg, key, default=None)
    except Exception:  # an interpolation that cannot resolve here: leave it out
        return None


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _with_interval(numbers: dict[str, float], key: str) -> str:
    """``value [low, high]`` when the run logged the interval (callbacks/intervals.py), else the value."""
    if key not in numbers:
        return ""
    low, high = numbers.get(key + CI[0]), numbers.get(key + CI[1])
    return _fmt(numbers[key]) + (f" [{_fmt(low)}, {_fmt(high)}]" if low is not None and high is not None else "")


def domain_table(metrics: dict, output_dir: Path | None = None) -> list[str]:
    """The "Across domains" section: the best checkpoint on the run's own test split (labelled with
    ``train_domain``, else "in-domain") and on each ``eval.test_sets`` set, in name order (linked to
    its ``test_sets/<name>/`` folder in ``output_dir``); nothing without ``test_sets/*`` metrics."""
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    names = sorted({k[len(TEST_SETS):].split("/", 1)[0] for k in numbers if k.startswith(TEST_SETS)} - {""})
    if not names:
        return []
    train = metrics.get("train_domain") if isinstance(metrics.get("train_domain"), str) else ""
    source = train or "training data"
    rows = [(f"{source} -> {train or 'in-domain'} (own test split)", "test/")]
    rows += [(f"{source} -> " + (f"[{name}]({TEST_SETS}{name}/)" if output_dir and (
        Path(output_dir) / TEST_SETS / name).is_dir() else name), f"{TEST_SETS}{name}/") for name in names]
    columns = [(m, label) for m, label in DOMAIN_COLUMNS
               if m != "images" or any(prefix + m in numbers for _, prefix in rows)]
    brackets = "; 95 % intervals in brackets" if any(k.endswith(CI) for k in numbers) else ""
    lines = ["", "## Across domains", "",
             f"Trained on {f'`{train}`' if train else 'the training data'}: the best checkpoint on its own test "
             f"split and on each set of `eval.test_sets`{brackets}.", "",
             "| train domain -> test domain | " + " | ".join(label for _, label in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for label, prefix in rows:
        cells = [f"{numbers[prefix + m]:.0f}" if m == "images" and prefix + m in numbers
                 else _with_interval(numbers, prefix + m) for m, _ in columns]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in [label, *cells]) + " |")
    return lines


def class_table(numbers: dict[str, float]) -> tuple[list[str], set[str]]:
    """More than two classes: the Markdown table of every class and the averages, and the keys it
    shows; nothing for two classes (no ``test/f1/<class>`` metrics)."""
    classes = [key.split("/", 2)[2] for key in numbers if key.startswith("test/f1/")]
    if not classes:
        return [], set()
    rows = [(name, [f"test/{metric}/{name}" for metric in PER_CLASS]) for name in classes]
    rows += [(label, [f"test/{key}" if key else None for key in keys]) for label, keys in AVERAGES]
    lines = ["", "### Every class", "", "At the most probable class (the crack metrics above are cracks vs the rest).",
             "", "| class | precision | recall | F1 | AUROC |", "|---|---|---|---|---|"]
    lines += [f"| {label} | " + " | ".join(_fmt(numbers[k]) if k in numbers else "" for k in keys) + " |"
              for label, keys in rows]
    return lines, {k for _, keys in rows for k in keys if k}


def run_report(cfg: DictConfig, output_dir: Path) -> str:
    """The Markdown text of ``output_dir``'s report."""
    output_dir = Path(output_dir)
    metrics = {}
    if (output_dir / "metrics.json").is_file():
        metrics = json.loads((output_dir / "metrics.json").read_text())
    lines = [f"# Run report: {output_dir.name}", "", "## Configuration", "", "| setting | value |", "|---|---|"]
    settings = [
        ("backbone", _select(cfg, "backbone.name")),
        ("pretrained", _select(cfg, "backbone.pretrained")),
        ("learning rate", _select(cfg, "model.lr")),
        ("max epochs", _select(cfg, "trainer.max_epochs")),
        ("fine-tuning", _select(cfg, "finetune._target_")),
        ("image size", _select(cfg, "data.image_size")),
        ("batch size", _select(cfg, "data.loader.batch_size")),
        ("split", _select(cfg, "data.split.strategy")),
        ("split fractions (train/val/test)", _select(cfg, "data.split.fractions")),
        ("seed", _select(cfg, "seed")),
        ("monitor", f"{_select(cfg, 'monitor')} ({_select(cfg, 'monitor_mode')})"),
        ("data", _select(cfg, "data.root")),
    ]
    for name, value in settings:
        if value is not None:
            if OmegaConf.is_config(value):
                value = OmegaConf.to_container(value)
            lines.append(f"| {name} | `{value}` |")
    if (output_dir / ".hydra" / "overrides.yaml").is_file():
        lines += ["", "Command-line overrides: see [.hydra/overrides.yaml](.hydra/overrides.yaml); "
                  "full config: [.hydra/config.yaml](.hydra/config.yaml)."]

    lines += ["", "## Test metrics", ""]
    # test/* and the like; train_domain (a string) and test_sets/* (the "Across domains" table) are not
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not k.startswith(TEST_SETS)}
    classes, in_classes = class_table(numbers)
    if numbers:
        ci = {k for k in numbers if k.endswith(CI)}  # shown beside their metric
        lines += ["| metric | value | 95 % interval |" if ci else "| metric | value |",
                  "|---|---|---|" if ci else "|---|---|"]
        named = dict(KEY_METRICS + (CLASS_KEY_METRICS if classes else ()))
        rest = sorted(k for k in numbers if k not in named and k not in in_classes and k not in ci)
        for key in [k for k in named if k in numbers] + rest:
            label = f"{key} ({named[key]})" if key in named else key
            interval = (f" | [{_fmt(numbers[key + '_ci_low'])}, {_fmt(numbers[key + '_ci_high'])}]"
                        if key + "_ci_low" in numbers else " | " if ci else "")
            lines.append(f"| {label} | {_fmt(numbers[key])}{interval} |")
        if metrics.get("best_ckpt"):
            ckpt = Path(metrics["best_ckpt"])
            try:
                link = ckpt.resolve().relative_to(output_dir.resolve()).as_posix()
            except ValueError:
                link = str(ckpt)
            lines += ["", f"Best checkpoint: [{ckpt.name}]({link})"]
    else:
        lines.append("Not tested (no metrics.json: `test=false`, or the run stopped before testing).")
    if (output_dir / "classification_report.txt").is_file():
        lines += ["", "Per-class report: [classification_report.txt](classification_report.txt)"]
    if (output_dir / "confusion_matrix.csv").is_file():  # more than two classes
        lines += ["", "Confusion matrix (most probable class): [confusion_matrix.csv](confusion_matrix.csv)"]
    lines += classes
    lines += domain_table(metrics, output_dir)

    figures = [(name, title) for name, title in FIGURES if (output_dir / name).is_file()]
    if figures:
        lines += ["", "## Figures"]
        for name, title in figures:
            lines += ["", f"### {title}", "", f"![{title}]({name})"]
    return "\n".join(lines) + "\n"


@rank_zero_only
def write_run_report(cfg: DictConfig, output_dir: Path) -> Path:
    """Write ``<output_dir>/report.md`` (atomically) and return its path."""
    path = Path(output_dir) / REPORT
    write_atomic(path, run_report(cfg, output_dir))
    return path
