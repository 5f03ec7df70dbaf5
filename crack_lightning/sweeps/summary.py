"""Summary of a sweep folder: one row per job, best first, plus a comparison figure.

Written by :class:`crack_lightning.sweeps.callback.SweepSummary` when a multirun ends, and
rebuilt from the folder alone (after a crash, or for an old sweep) with::

    python -m crack_lightning.cli.sweep_summary <sweep folder>

Everything is read from the job folders (``.hydra/``, ``metrics.json``, ``csv/metrics.csv``,
``job.json``, ``error.txt``), so the rebuild gives the same ``summary.csv`` as the sweep did.
Jobs tested on ``eval.test_sets`` also get a cross-domain matrix and ``cross_domain.png``
(:mod:`crack_lightning.sweeps.cross_domain`).
The command exits 1 when a job failed, like the sweep itself.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from crack_lightning.utils.files import write_atomic
from crack_lightning.sweeps.cross_domain import CROSS_DOMAIN_PNG, cross_domain_figure, cross_domain_markdown
from crack_lightning.sweeps.job import ERROR_FILE, JOB_FILE

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
SUMMARY_PNG = "summary.png"
# test metrics shown in summary.md when some job has them (summary.csv has all of them); macro-F1
# only runs of more than two classes have (their f1 is that of cracks vs the rest)
MD_TEST_METRICS = ("test/acc", "test/macro_f1", "test/f1", "test/auroc", "test/loss", "test/threshold",
                   "test/missed_cracks_at_threshold")
TEXT_KEYS = ("best_ckpt", "train_domain")  # the strings of metrics.json


@dataclass
class JobResult:
    """What one job of a sweep left in its folder."""

    job: str                      # folder relative to the sweep folder ("0", "1", ...)
    path: Path
    overrides: list[str]
    status: str                   # completed | failed | incomplete (no result and no error: killed?)
    best: float | None = None     # best value of the monitored metric over validation
    test: dict[str, float] = field(default_factory=dict)
    epochs: int | None = None
    wall_time_s: float | None = None
    images_per_sec: float | None = None  # training images/s of the last epoch (train/images_per_sec)
    best_ckpt: str = ""
    error: str = ""
    val_curve: list[tuple[int, float]] = field(default_factory=list)
    monitor: str | None = None
    monitor_mode: str | None = None
    train_domain: str = ""        # metrics.json's "train_domain" (runs with eval.test_sets; their
    # test_sets/<name>/<metric> are in ``test`` too: cross_domain.set_metrics() picks them out)

    @property
    def ok(self) -> bool:
        return self.status == "completed"


def _job_key(name: str):
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in Path(name).parts]


def _float(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _read_metrics_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_job(job_dir: Path, sweep_dir: Path) -> JobResult:
    """Collect one job folder's overrides, status, metrics and validation curve."""
    hydra_dir = job_dir / ".hydra"
    overrides = yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) or []
    config = {}
    if (hydra_dir / "config.yaml").is_file():
        config = yaml.safe_load((hydra_dir / "config.yaml").read_text()) or {}
    record = {}
    if (job_dir / JOB_FILE).is_file():
        record = json.loads((job_dir / JOB_FILE).read_text())
    metrics = {}
    if (job_dir / "metrics.json").is_file():
        metrics = json.loads((job_dir / "metrics.json").read_text())

    if (job_dir / ERROR_FILE).is_file():
        status, error = "failed", (job_dir / ERROR_FILE).read_text().strip()
    elif metrics or record.get("status") == "completed":
        status, error = "completed", ""
    else:
        status, error = "incomplete", "no metrics.json and no error.txt (killed, or still running?)"

    result = JobResult(
        job=job_dir.relative_to(sweep_dir).as_posix(), path=job_dir, overrides=[str(o) for o in overrides],
        status=status, error=error, wall_time_s=_float(record.get("wall_time_s")),
        best_ckpt=str(metrics.get("best_ckpt", "")), train_domain=str(metrics.get("train_domain") or ""),
        test={k: float(v) for k, v in sorted(metrics.items()) if k not in TEXT_KEYS and _float(v) is not None},
        monitor=config.get("monitor"), monitor_mode=config.get("monitor_mode"),
    )
    rows = _read_metrics_csv(job_dir / "csv" / "metrics.csv")
    monitor = result.monitor or "val/loss"
    # epochs that trained; train() validates the best weights once more after fit, at
    # epoch max_epochs: that row is no epoch of its own and is left out
    trained = {r["epoch"] for r in rows if r.get("epoch") and _float(r.get("train/loss_epoch")) is not None}
    rows = [r for r in rows if not trained or r.get("epoch") in trained]
    values = [v for v in (_float(r.get(monitor)) for r in rows) if v is not None]
    if values:
        result.best = max(values) if result.monitor_mode == "max" else min(values)
    elif result.ok:
        result.best = _float(record.get("return_value"))
    result.epochs = len(trained) or len({r["epoch"] for r in rows if r.get("epoch") and _float(r.get(monitor)) is not None}) or None
    speeds = [v for v in (_float(r.get("train/images_per_sec")) for r in rows) if v is not None]
    result.images_per_sec = speeds[-1] if speeds else None
    seen = set()
    for r in rows:  # the first val/loss of each epoch
        loss, epoch = _float(r.get("val/loss")), _float(r.get("epoch"))
        if loss is not None and epoch is not None and int(epoch) not in seen:
            seen.add(int(epoch))
            result.val_curve.append((int(epoch), loss))
    return result


def collect_jobs(sweep_dir: Path) -> list[JobResult]:
    """Every job folder under ``sweep_dir`` (a folder with ``.hydra/overrides.yaml``), by job number."""
    sweep_dir = Path(sweep_dir)
    job_dirs = {p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")}
    return [read_job(d, sweep_dir) for d in sorted(job_dirs, key=lambda d: _job_key(d.relative_to(sweep_dir).as_posix()))]


def sort_jobs(jobs: list[JobResult], mode: str = "min") -> list[JobResult]:
    """Best first by the monitored metric; jobs without a value, then failures, last (by job number)."""
    sign = -1.0 if mode == "max" else 1.0

    def key(j: JobResult):
        group = 0 if j.ok and j.best is not None else 1 if j.ok else 2
        return (group, sign * j.best if group == 0 else 0.0, _job_key(j.job))

    return sorted(jobs, key=key)


def varying_overrides(jobs: list[JobResult]) -> tuple[list[list[str]], list[str]]:
    """Per job, the overrides that differ between jobs; and the overrides all jobs share."""
    keyed = [dict(o.split("=", 1) if "=" in o else (o, "") for o in j.overrides) for j in jobs]
    keys = list(dict.fromkeys(k for d in keyed for k in d))
    shared = [k for k in keys if len(jobs) > 1 and all(k in d for d in keyed) and len({d[k] for d in keyed}) == 1]
    per_job = [[o for o in j.overrides if (o.split("=", 1)[0]) not in shared] for j in jobs]
    common = [o for o in jobs[0].overrides if o.split("=", 1)[0] in shared] if jobs else []
    return per_job, common


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def summary_table(jobs: list[JobResult], monitor: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of summary.csv (``jobs`` in the order they are listed)."""
    per_job, _ = varying_overrides(jobs)
    test_keys = sorted({k for j in jobs for k in j.test})  # test_sets/<name>/<metric> too, after test/
    domains = ["train_domain"] if any(j.train_domain for j in jobs) else []  # runs with eval.test_sets
    header = ["rank", "job", "status", "overrides", f"best {monitor}", *domains, *test_keys, "epochs",
              "wall_time_s", "images_per_sec", "best_ckpt", "error"]
    rows = []
    for rank, (job, overrides) in enumerate(zip(jobs, per_job), start=1):
        rows.append([
            str(rank), job.job, job.status, " ".join(overrides), _fmt(job.best), *(job.train_domain for _ in domains),
            *(_fmt(job.test.get(k)) for k in test_keys), _fmt(job.epochs), _fmt(job.wall_time_s),
            _fmt(job.images_per_sec), job.best_ckpt, job.error,
        ])
    return header, rows


def _with_interval(test: dict, key: str) -> str:
    """A metric and, when the run logged one (callbacks/intervals.py), its 95 % interval."""
    low, high = test.get(f"{key}_ci_low"), test.get(f"{key}_ci_high")
    interval = f" [{low:.3g}, {high:.3g}]" if low is not None and high is not None else ""
    return _fmt(test.get(key)) + interval


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def summary_markdown(sweep_dir: Path, jobs: list[JobResult], monitor: str, mode: str) -> str:
    per_job, common = varying_overrides(jobs)
    test_keys = [k for k in MD_TEST_METRICS if any(k in j.test for j in jobs)]
    failed = [j for j in jobs if not j.ok]
    lines = [
        f"# Sweep summary: {Path(sweep_dir).name}", "",
        f"{len(jobs)} jobs, {len(jobs) - len(failed)} completed, {len(failed)} failed; "
        f"sorted by best `{monitor}` ({mode}).", "",
    ]
    if common:
        lines += ["Shared overrides: " + " ".join(f"`{o}`" for o in common), ""]
    header = ["rank", "job", "status", "overrides", f"best {monitor}", *(k.removeprefix("test/") for k in test_keys),
              "epochs", "wall time (s)", "train images/s", "best checkpoint"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, (job, overrides) in enumerate(zip(jobs, per_job), start=1):
        ckpt = Path(job.best_ckpt)
        ckpt_cell = ""
        if job.best_ckpt:
            try:
                rel = ckpt.relative_to(Path(sweep_dir).resolve()) if ckpt.is_absolute() else ckpt
                ckpt_cell = f"[{ckpt.name}]({rel.as_posix()})"
            except ValueError:
                ckpt_cell = f"`{job.best_ckpt}`"
        cells = [str(rank), f"[{job.job}]({job.job}/)", job.status, " ".join(f"`{o}`" for o in overrides),
                 _fmt(job.best), *(_with_interval(job.test, k) for k in test_keys), _fmt(job.epochs),
                 _fmt(job.wall_time_s), _fmt(job.images_per_sec), ckpt_cell]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    if failed:
        lines += ["", "## Failed jobs", ""]
        lines += [f"- job {j.job} (" + " ".join(f"`{o}`" for o in o_) + f"): {j.error}"
                  for j, o_ in zip(jobs, per_job) if not j.ok]
    lines += ["", f"![summary]({SUMMARY_PNG})", ""]
    lines += cross_domain_markdown(jobs)  # nothing unless a job has test_sets/* metrics
    return "\n".join(lines)


def summary_figure(jobs: list[JobResult], monitor: str):
    """Bars of the best monitored value per job and the validation loss curves overlaid."""
    from matplotlib.figure import Figure  # no pyplot: no display or backend needed (as plots.py)

    per_job, _ = varying_overrides(jobs)
    labels = [f"{j.job}: " + " ".join(o) if o else j.job for j, o in zip(jobs, per_job)]
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    bars, curves = fig.subplots(1, 2)
    heights = [j.best if j.best is not None else 0.0 for j in jobs]
    colors = ["tab:blue" if j.ok else "tab:red" for j in jobs]
    positions = list(range(len(jobs)))
    bars.barh(positions, heights, color=colors)
    for pos, job in zip(positions, jobs):
        if not job.ok:
            bars.text(0, pos, f"  {job.status}", va="center", color="tab:red")
        elif job.best is not None:
            bars.text(job.best, pos, f" {job.best:.4g}", va="center", fontsize=8)
    bars.set_yticks(positions, [label[:40] for label in labels], fontsize=8)
    bars.invert_yaxis()  # best on top
    bars.set_xlabel(f"best {monitor}")
    bars.set_title(f"best {monitor} per job (best first)")
    for job, label in zip(jobs, labels):
        if job.val_curve:
            epochs, losses = zip(*job.val_curve)
            curves.plot(epochs, losses, marker="o", label=label[:40])
    curves.set_xlabel("epoch")
    curves.set_ylabel("val/loss")
    curves.set_title("validation loss per job")
    if curves.get_legend_handles_labels()[0]:
        curves.legend(fontsize=8)
    return fig


def write_summary(sweep_dir: Path, monitor: str | None = None, mode: str | None = None) -> list[JobResult]:
    """Write summary.csv, summary.md and summary.png into ``sweep_dir``; return the jobs, best first.

    ``monitor``/``mode`` default to the jobs' own ``monitor``/``monitor_mode`` (else val/loss, min)."""
    from crack_lightning.reports.plots import save_figure

    sweep_dir = Path(sweep_dir)
    jobs = collect_jobs(sweep_dir)
    if not jobs:  # no sweep here: write nothing into someone's folder
        return []
    monitor = monitor or next((j.monitor for j in jobs if j.monitor), None) or "val/loss"
    mode = mode or next((j.monitor_mode for j in jobs if j.monitor_mode), None) or "min"
    jobs = sort_jobs(jobs, mode)

    header, rows = summary_table(jobs, monitor)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_atomic(sweep_dir / SUMMARY_CSV, buffer.getvalue())
    write_atomic(sweep_dir / SUMMARY_MD, summary_markdown(sweep_dir, jobs, monitor, mode))
    save_figure(summary_figure(jobs, monitor), sweep_dir / SUMMARY_PNG)  # atomic too
    figure = cross_domain_figure(jobs)  # None unless a job has test_sets/* metrics
    if figure is not None:
        save_figure(figure, sweep_dir / CROSS_DOMAIN_PNG)
    return jobs
