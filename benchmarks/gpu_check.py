"""The checks, the profile run and the BENCHMARKS.md section of ``benchmarks/gpu_check.sh`` (docs/gpu.md);
the profiler callback itself is gpu_profile.py.

    python benchmarks/gpu_check.py junit <pytest.xml> --mode gpu|dry --notes <notes.tsv>
    python benchmarks/gpu_check.py train-check <run folder> --mode gpu|dry --notes <notes.tsv> --copy-metrics <file>
    python benchmarks/gpu_check.py targets <BENCHMARKS-gpu.md> --json <targets.json> --mode gpu|dry [--log <gpu_check.log> --work <bench work>]
    python benchmarks/gpu_check.py profile --work <bench work> --per-class N --image-size PX --batch-size B --out <profile.txt>
    python benchmarks/gpu_check.py summary <BENCHMARKS-gpu.md> --steps <steps.tsv> --notes <notes.tsv> ...

Each check prints one line and exits 1 when what it checks is wrong (targets: 3 when one is missed,
the script's cue to profile). Only the profile and the
summary import torch: the checks take a second, not the ten that importing Lightning costs.
``settings_probe`` is the callback the short ``train.py`` run gets through a Hydra override
(``+callbacks.gpu_check_probe._target_=gpu_check.settings_probe``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

# issue 21's targets: MobileNetV2 at 224 px with AMP, and the 10-epoch fine-tune over 32k/4k/4k
TRAIN_RATE_TARGET = 6000.0   # training images/s end to end (bench's Trainer column, unfrozen)
FIT_SECONDS_TARGET = 90.0    # finetune.py's fit s, validation included



def _note(notes: str | None, name: str, text: str) -> None:
    """One line for the summary's step table, and for the log."""
    print(f"{name}: {text}", flush=True)
    if notes:
        with open(notes, "a") as f:
            f.write(f"{name}\t{text}\n")


# ---------------------------------------------------------------- the probe in the train.py run

def settings_probe(out: str):
    """A Lightning callback that writes, at the first training step, what the run really used:
    precision, cuDNN benchmark, TF32, where the decoded cache sits and the batch's layout.
    A factory, so that importing this module stays free of Lightning."""
    import lightning as L
    import torch

    class SettingsProbe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if Path(out).exists():
                return
            images = batch[0]
            dm = trainer.datamodule
            resident = getattr(dm, "resident", None) is not None  # then batches are gathered from its device copy
            settings = {
                "precision": str(trainer.precision),
                "device": str(trainer.strategy.root_device),
                "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
                "float32_matmul_precision": torch.get_float32_matmul_precision(),
                "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
                "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
                "cache_resident": resident,
                "cache_device": str(images.device) if resident else None,
                "batch": {"device": str(images.device), "dtype": str(images.dtype), "shape": list(images.shape),
                          "channels_last": images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last)},
            }
            Path(out).write_text(json.dumps(settings, indent=2) + "\n")

    return SettingsProbe()


# ---------------------------------------------------------------- checks

def junit(args) -> int:
    """The CUDA tests ran and passed (gpu), or were collected and skipped for want of a GPU (dry)."""
    suite = ET.parse(args.file).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    names = [c.get("name") for c in suite.iter("testcase")]
    text = f"{tests} collected, {tests - skipped - failed} passed, {skipped} skipped, {failed} failed ({', '.join(names)})"
    ok = tests >= 2 and failed == 0 and (skipped == 0 if args.mode == "gpu" else skipped == tests)
    _note(args.notes, "CUDA tests", text + ("" if ok else " -- expected every one to " +
                                           ("pass" if args.mode == "gpu" else "skip without a GPU")))
    return 0 if ok else 1


def train_check(args) -> int:
    """metrics.json of the short train.py run, and the settings its probe saw."""
    run = Path(args.run)
    problems = []
    try:
        metrics = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError) as e:
        _note(args.notes, "train.py", f"no readable metrics.json in {run}: {e}")
        return 1
    acc, images = metrics.get("test/acc"), metrics.get("test/images", 0)
    if not (isinstance(acc, float) and math.isfinite(acc)):
        problems.append(f"test/acc is {acc!r}")
    if not images:
        problems.append("no test images")
    if not Path(metrics.get("best_ckpt") or "/nonexistent").is_file():
        problems.append(f"best_ckpt {metrics.get('best_ckpt')!r} is no file")
    try:
        seen = json.loads((run / "settings.json").read_text())
    except (OSError, ValueError):
        seen = {}
        problems.append("the settings probe wrote nothing")
    want = ({"precision": "bf16-mixed", "cudnn_benchmark": True, "float32_matmul_precision": "high",
             "cache_resident": True} if args.mode == "gpu" else {"precision": "32-true", "cache_resident": False})
    problems += [f"{k} is {seen.get(k)!r}, expected {v!r}" for k, v in want.items() if seen and seen.get(k) != v]
    if args.mode == "gpu" and seen and not str(seen.get("cache_device", "")).startswith("cuda"):
        problems.append(f"the decoded cache sits on {seen.get('cache_device')!r}, not the GPU")
    if args.copy_metrics:
        shutil.copyfile(run / "metrics.json", args.copy_metrics)
    batch = seen.get("batch", {})
    shown = f"{acc:.3f}" if isinstance(acc, float) else repr(acc)
    text = (f"test/acc {shown} on {int(images or 0)} images; precision {seen.get('precision')}, "
            f"cudnn.benchmark {seen.get('cudnn_benchmark')}, matmul {seen.get('float32_matmul_precision')} "
            f"(TF32 matmul {seen.get('matmul_allow_tf32')}, cuDNN {seen.get('cudnn_allow_tf32')}), "
            f"decoded cache on {seen.get('cache_device') or 'the host'}, batches reach the model as "
            f"{batch.get('dtype')} on {batch.get('device')}, "
            f"{'channels_last' if batch.get('channels_last') else 'NCHW-contiguous (forward copies them to channels_last)'}")
    _note(args.notes, "train.py", text + ("; PROBLEMS: " + "; ".join(problems) if problems else ""))
    return 1 if problems else 0


def _tables(md: str) -> list[list[dict]]:
    """Every Markdown table of ``md`` as a list of rows (header -> cell)."""
    tables, lines = [], md.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.startswith("|") and re.match(r"^\|(-+\|)+$", lines[i + 1].replace(" ", "")):
            head = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(dict(zip(head, (c.strip() for c in row.strip("|").split("|")))))
            tables.append(rows)
    return tables


def _number(cell: str | None) -> float | None:
    try:
        return float(cell.replace(",", ""))
    except (AttributeError, ValueError):
        return None


def _fallbacks(found: dict, log: str | None, work: str | None) -> None:
    """Where a script ran out of its time before appending its table: bench's rows as it printed
    them, and the fit's seconds from finetune.py's phases.json (written when fitting ends)."""
    if found["train_rate"] is None and log and Path(log).exists():
        for line in Path(log).read_text(errors="replace").splitlines():
            m = re.match(r"mobilenetv2\s+(frozen|unfrozen)\s+alone\s+\S+\s+plain\s+\S+\s+trainer\s+([\d.]+)", line)
            if m:
                found["train_rate" if m[1] == "unfrozen" else "frozen_rate"] = float(m[2])
                found["bench_from"] = "its printed rows: bench.py ran out of time before its table"
    phases = sorted(Path(work).glob("finetune-*/phases.json"), key=lambda p: p.stat().st_mtime) if work else []
    if found["fit_s"] is None and phases:
        marks = json.loads(phases[-1].read_text())
        found["fit_s"] = round(marks["fit_end"] - marks["first_step"], 1)
        found["fit_from"] = "phases.json: finetune.py ran out of time after fitting"


def targets(args) -> int:
    """Reads the sections bench.py and finetune.py appended and compares them with the targets."""
    md = Path(args.file).read_text() if Path(args.file).exists() else ""
    found = {"train_rate": None, "frozen_rate": None, "loader": None, "data_path": None, "fit_s": None,
             "fit_images": None, "fit_epochs": None}
    for rows in _tables(md):
        for row in rows:
            if row.get("backbone") == "mobilenetv2" and "Trainer img/s" in row:
                key = "train_rate" if row.get("phase") == "unfrozen" else "frozen_rate"
                found[key] = _number(row["Trainer img/s"])
                if row.get("phase") == "frozen":
                    found["loader"], found["data_path"] = _number(row.get("loader img/s")), _number(row.get("data path img/s"))
            if "fit s (validation incl.)" in row:
                found["fit_s"] = _number(row["fit s (validation incl.)"])
                found["fit_images"], found["fit_epochs"] = row.get("images train/val/test"), row.get("epochs")
    _fallbacks(found, args.log, args.work)
    rate, fit = found["train_rate"], found["fit_s"]
    _note(args.notes, "bench", f"Trainer {found['train_rate']} img/s unfrozen, {found['frozen_rate']} frozen; "
                               f"loader {found['loader']}, data path {found['data_path']} img/s"
                               + (f" (from {found['bench_from']})" if "bench_from" in found else ""))
    _note(args.notes, "fine-tune", f"fit {fit} s, validation included, {found['fit_epochs']} epochs over "
                                   f"{found['fit_images']} images (train/val/test)"
                                   + (f" (from {found['fit_from']})" if "fit_from" in found else ""))
    found["train_rate_met"] = rate is not None and rate >= TRAIN_RATE_TARGET
    found["fit_met"] = fit is not None and fit <= FIT_SECONDS_TARGET
    found["judged"] = args.mode == "gpu"
    Path(args.json).write_text(json.dumps(found, indent=2) + "\n")
    verdict = (lambda met: "met" if met else "MISSED") if args.mode == "gpu" else (lambda met: "not judged (dry run)")
    _note(args.notes, "targets",
          f"training {rate if rate is not None else 'not measured'} img/s (>= {TRAIN_RATE_TARGET:.0f}: "
          f"{verdict(found['train_rate_met'])}); fit {fit if fit is not None else 'not measured'} s "
          f"(<= {FIT_SECONDS_TARGET:.0f}: {verdict(found['fit_met'])})")
    missed = args.mode == "gpu" and not (found["train_rate_met"] and found["fit_met"])
    return 3 if missed else 0  # 3: the script's cue to profile


# ---------------------------------------------------------------- profile

def run_profile(args) -> int:
    """A short fit through the real task (callbacks, logger, progress) on bench's data, profiled."""
    from omegaconf import open_dict

    from crack_lightning.data.synthetic.generate import generate
    from crack_lightning.train import train
    import finetune

    work = Path(args.work).resolve()
    root = work / f"synthetic-{args.per_class}"  # bench.py's and finetune.py's: reused, with their caches
    generate(root, per_class=args.per_class, seed=0, workers=max(1, len(os.sched_getaffinity(0))))
    run_dir = work / f"profile-{dt.datetime.now():%H%M%S}"
    from gpu_profile import STACK_STEPS

    steps = args.wait + 2 + args.active + 1 + 1 + STACK_STEPS + 1  # the two windows, a step to switch, one spare
    options = argparse.Namespace(image_size=args.image_size, batch_size=args.batch_size, epochs=1, compile=False,
                                 overrides=["finetune.unfreeze_at_epoch=0", f"+trainer.limit_train_batches={steps}",
                                            "+trainer.limit_val_batches=2", "test=false"])
    cfg = finetune.config(options, root, work, run_dir)
    with open_dict(cfg):
        cfg.callbacks.step_profiler = {"_target_": "gpu_profile.step_profiler", "out": str(Path(args.out).resolve()),
                                       "trace": str(Path(args.trace).resolve()) if args.trace else None,
                                       "wait": args.wait, "active": args.active}
    train(cfg)
    text = Path(args.out).read_text()
    print(text)
    line = next((l for l in text.splitlines() if l.startswith("summary: ")), text.splitlines()[0])
    _note(args.notes, "profile", line.removeprefix("summary: "))
    return 0


# ---------------------------------------------------------------- the BENCHMARKS.md section

def _versions() -> str:
    import importlib.metadata as md

    import torch

    parts = []
    if torch.cuda.is_available():
        parts.append(f"{torch.cuda.get_device_name(0)} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)")
        try:
            import subprocess

            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
            parts.append(f"driver {driver}")
        except (OSError, IndexError, subprocess.SubprocessError):
            pass
        parts.append(f"CUDA {torch.version.cuda} (torch's), cuDNN {torch.backends.cudnn.version()}")
    names = ("torch", "lightning", "timm", "torchmetrics", "numpy", "hydra-core", "omegaconf", "captum")
    found = []
    for name in names:
        try:
            found.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            pass
    return "; ".join(parts + [", ".join(found)])


def summary(args) -> int:
    """Appends the GPU check's own section (targets, steps, versions) after bench's and finetune's."""
    from records import describe_machine

    found = json.loads(Path(args.targets).read_text()) if args.targets and Path(args.targets).exists() else {}
    notes = {}
    if args.notes and Path(args.notes).exists():
        for line in Path(args.notes).read_text().splitlines():
            name, _, text = line.partition("\t")
            notes[name] = text
    steps = [line.split("\t") for line in Path(args.steps).read_text().splitlines() if line.strip()]
    judged = found.get("judged")

    def verdict(met):
        return ("yes" if met else "**no**") if judged else "not judged (dry run)"

    def value(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) else "not measured"

    title = "GPU check" + ("" if judged else " (dry run, tiny, CPU)")
    body = [f"`{args.command}` — {_versions()}", "",
            "| target (issue 21) | measured | met |", "|---|---|---|",
            f"| MobileNetV2 224 px, AMP: Trainer training img/s (unfrozen) >= {TRAIN_RATE_TARGET:,.0f} "
            f"| {value(found.get('train_rate'), ',.0f')} | {verdict(found.get('train_rate_met'))} |",
            f"| 10-epoch fine-tune, 32k/4k/4k at 224 px: fit s (validation incl.) <= {FIT_SECONDS_TARGET:.0f} "
            f"| {value(found.get('fit_s'), '.1f')} | {verdict(found.get('fit_met'))} |",
            f"| (frozen phase: Trainer img/s; loader img/s; data path img/s) | "
            f"{value(found.get('frozen_rate'), ',.0f')}; {value(found.get('loader'), ',.0f')}; "
            f"{value(found.get('data_path'), ',.0f')} | — |", "",
            "| step | status | s | result |", "|---|---|---|---|"]
    for name, rc, seconds in steps:
        status = "ok" if rc == "0" else ("timed out" if rc in ("124", "137") else f"failed ({rc})")
        body.append(f"| {name} | {status} | {seconds} | {notes.get(name, '').replace('|', '/')} |")
    heading = f"## {dt.datetime.now():%Y-%m-%d %H:%M} — {title} — {describe_machine()}"
    section = "\n".join([heading, "", *body, ""])
    with open(args.file, "a") as f:
        f.write(section + "\n")
    print("\n" + section)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="verb", required=True)
    j = sub.add_parser("junit")
    j.add_argument("file")
    t = sub.add_parser("train-check")
    t.add_argument("run")
    t.add_argument("--copy-metrics")
    g = sub.add_parser("targets")
    g.add_argument("file")
    g.add_argument("--json", required=True)
    g.add_argument("--log", help="gpu_check.log: bench's printed rows, where its table is missing")
    g.add_argument("--work", help="finetune.py's --work: its phases.json, where its table is missing")
    for parser in (j, t, g):
        parser.add_argument("--mode", choices=["gpu", "dry"], required=True)
        parser.add_argument("--notes")
    f = sub.add_parser("profile")
    f.add_argument("--work", required=True)
    f.add_argument("--per-class", type=int, required=True)
    f.add_argument("--image-size", type=int, required=True)
    f.add_argument("--batch-size", type=int, required=True)
    f.add_argument("--wait", type=int, default=10, help="steps before the profiler's 2 warm-up steps")
    f.add_argument("--active", type=int, default=5, help="profiled steps")
    f.add_argument("--out", required=True)
    f.add_argument("--trace", help="a gzipped Chrome trace (chrome://tracing, ui.perfetto.dev)")
    f.add_argument("--notes")
    s = sub.add_parser("summary")
    s.add_argument("file")
    s.add_argument("--steps", required=True)
    s.add_argument("--notes")
    s.add_argument("--targets")
    s.add_argument("--command", required=True)
    args = p.parse_args()
    return {"junit": junit, "train-check": train_check, "targets": targets, "profile": run_profile,
            "summary": summary}[args.verb](args)


if __name__ == "__main__":
    sys.exit(main())
