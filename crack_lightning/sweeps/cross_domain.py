"""The cross-domain matrix of a sweep whose jobs were tested on ``eval.test_sets``.

A job trained on one domain (``train_domain`` in its ``metrics.json``, else "in-domain") has its
own test split (``test/<metric>``) and, for each extra test set ``<name>``, ``test_sets/<name>/<metric>``.
The matrix has a row per train domain and a column per test domain: the train domains of the
rows, then every other test set name, so the diagonal cell of a row is its own test split.
``summary.md`` gets one table of recall at the threshold and one of F1 at the threshold, each
cell ``value [95 % interval]``; ``cross_domain.png`` is the recall as a heat map.

When several jobs share a train domain -- a sweep over data x backbone -- there is one matrix per
combination of the *other* overrides (one per backbone): each cell is then one job, with its
interval, and a backbone that generalises badly is not averaged away. The overrides that name
the data are those with one value per train domain (``data.root=...``, ``data=...``); every
other override that varies between the jobs splits the matrices. Only jobs whose overrides are
the same apart from those share a cell: it shows their mean and ``(n=K)``, without an interval.
Matrices come in the order of their best job (the order :mod:`.summary` lists the jobs in).

This module reads only the jobs' attributes (:class:`Job`) and :mod:`.summary`
imports it, not the other way round (no import circle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol


class Job(Protocol):
    """What this module reads of a :class:`crack_lightning.sweeps.summary.JobResult`."""

    job: str
    overrides: list[str]
    test: dict[str, float]
    train_domain: str

    @property
    def ok(self) -> bool: ...


CROSS_DOMAIN_PNG = "cross_domain.png"
TEST_SETS = "test_sets/"
IN_DOMAIN = "in-domain"  # the train domain of a job whose metrics.json names none
METRICS = (("recall_at_threshold", "Recall at threshold"), ("f1_at_threshold", "F1 at threshold"))


def set_metrics(job: Job) -> dict[str, dict[str, float]]:
    """``test_sets/<name>/<metric>`` of ``job.test`` as ``{name: {metric: value}}``, by name."""
    sets: dict[str, dict[str, float]] = {}
    for key, value in job.test.items():
        if key.startswith(TEST_SETS) and key.count("/") >= 2:
            name, metric = key[len(TEST_SETS):].split("/", 1)
            sets.setdefault(name, {})[metric] = value
    return dict(sorted(sets.items()))


def train_domain(job: Job) -> str:
    return job.train_domain or IN_DOMAIN


def with_interval(metrics: dict[str, float], key: str, digits: int = 6) -> str:
    """``value [low, high]`` as summary.md's job table writes it (``digits`` and 3 significant
    digits; a test keeps the two the same)."""
    if key not in metrics:
        return ""
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    return f"{metrics[key]:.{digits}g}" + (f" [{low:.3g}, {high:.3g}]" if low is not None and high is not None else "")


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


@dataclass
class Matrix:
    """One cross-domain matrix: the jobs of one combination of the other overrides."""

    overrides: list[str]                       # those overrides (none when all jobs make one matrix)
    rows: list[str]                            # train domains
    columns: list[str]                         # test domains: the rows' own, then the other test sets
    jobs: dict[str, list[Job]] = field(default_factory=dict)                 # train domain -> jobs
    cells: dict[tuple[str, str], list[dict[str, float]]] = field(default_factory=dict)  # metrics per job

    def cell(self, row: str, column: str, metric: str, digits: int = 6) -> str:
        """``value [low, high]`` of one job, ``mean (n=K)`` of several, "" when not tested."""
        values = [m for m in self.cells.get((row, column), []) if metric in m]
        if len(values) == 1:
            return with_interval(values[0], metric, digits)
        return f"{sum(m[metric] for m in values) / len(values):.{digits}g} (n={len(values)})" if values else ""

    @property
    def title(self) -> str:
        return " ".join(self.overrides)

    def value(self, row: str, column: str, metric: str) -> float:
        values = [m[metric] for m in self.cells.get((row, column), []) if metric in m]
        return sum(values) / len(values) if values else math.nan


def _key(override: str) -> str:
    return override.split("=", 1)[0]


def matrices(jobs: list[Job]) -> list[Matrix]:
    """The matrices of the completed jobs, one per combination of the other overrides (in the
    order of ``jobs``); none when no job has ``test_sets/*`` metrics."""
    jobs = [j for j in jobs if j.ok and j.test]
    if not any(set_metrics(j) for j in jobs):
        return []
    values = [{_key(o): o for o in j.overrides} for j in jobs]
    every = list(dict.fromkeys(k for v in values for k in v))
    keys = [k for k in every if len({v.get(k) for v in values}) > 1]  # those that vary between the jobs

    def names_the_data(key: str) -> bool:  # one value per train domain
        seen: dict[str, set] = {}
        for job, v in zip(jobs, values):
            seen.setdefault(train_domain(job), set()).add(v.get(key))
        return all(len(s) == 1 for s in seen.values())

    others = [k for k in keys if not names_the_data(k)]
    groups: dict[tuple, list[tuple[Job, list[str]]]] = {}
    for job, v in zip(jobs, values):
        groups.setdefault(tuple(v.get(k) for k in others), []).append((job, [v[k] for k in others if k in v]))
    found = []
    for members in groups.values():
        rows = sorted({train_domain(j) for j, _ in members})
        extra = sorted({name for j, _ in members for name in set_metrics(j)} - set(rows))
        matrix = Matrix(overrides=members[0][1], rows=rows, columns=rows + extra)
        for job, _ in members:
            row = train_domain(job)
            matrix.jobs.setdefault(row, []).append(job)
            own = {k.removeprefix("test/"): v for k, v in job.test.items() if k.startswith("test/")}
            matrix.cells.setdefault((row, row), []).append(own)
            for name, metrics in set_metrics(job).items():
                if name != row:  # the diagonal is the job's own test split
                    matrix.cells.setdefault((row, name), []).append(metrics)
        found.append(matrix)
    return found


def cross_domain_markdown(jobs: list[Job]) -> list[str]:
    """The "Cross-domain matrix" section of summary.md (lines); nothing without test sets."""
    found = matrices(jobs)
    if not found:
        return []
    lines = ["## Cross-domain matrix", "",
             "Each job's best checkpoint on its own test split (the diagonal) and on each set of "
             "`eval.test_sets`: rows are the domain it trained on, columns the domain it was tested on; "
             "`value [95 % interval]`. One matrix per combination of the other overrides; a cell of several "
             "jobs (the same overrides otherwise) is their mean, `(n=K)`, without an interval.", "",
             f"![cross-domain recall at threshold]({CROSS_DOMAIN_PNG})", ""]
    for matrix in found:
        if matrix.overrides:
            lines += ["### " + _md_cell(" ".join(f"`{o}`" for o in matrix.overrides)), ""]
        for metric, label in METRICS:
            lines += [f"{label}:", "", "| train \\ test | " + " | ".join(map(_md_cell, matrix.columns)) + " |",
                      "|---|" + "---|" * len(matrix.columns)]
            for row in matrix.rows:
                links = ", ".join(f"[{j.job}]({j.job}/)" for j in matrix.jobs[row])
                label_cell = f"{_md_cell(row)} (job{'s' if len(matrix.jobs[row]) > 1 else ''} {links})"
                lines.append("| " + " | ".join([label_cell, *(_md_cell(matrix.cell(row, c, metric))
                                                              for c in matrix.columns)]) + " |")
            lines.append("")
    return lines


def cross_domain_figure(jobs: list[Job], metric: str = "recall_at_threshold"):
    """Heat maps of ``metric`` (0..1), one per matrix, each cell annotated; None without test sets."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # no pyplot: no display or backend needed (as plots.py)

    found = matrices(jobs)
    if not found:
        return None
    label = dict(METRICS).get(metric, metric)
    ncols = min(3, len(found))
    nrows = math.ceil(len(found) / ncols)
    width = max(len(m.columns) for m in found)
    height = max(len(m.rows) for m in found)
    fig = Figure(figsize=(ncols * (1.6 + 1.3 * width), nrows * (1.4 + 0.8 * height)), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    image = None
    for ax, matrix in zip(axes, found):
        grid = [[matrix.value(r, c, metric) for c in matrix.columns] for r in matrix.rows]
        image = ax.imshow(grid, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
        for i, row in enumerate(matrix.rows):
            for j, column in enumerate(matrix.columns):
                text = matrix.cell(row, column, metric, digits=3).replace(" [", "\n[").replace(" (n=", "\n(n=")
                if text:
                    dark = grid[i][j] < 0.6  # viridis is dark below ~0.6
                    ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black",
                            fontweight="bold" if row == column else "normal")
        ax.set_xticks(range(len(matrix.columns)), matrix.columns, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(matrix.rows)), matrix.rows, fontsize=8)
        ax.set_xlabel("test domain")
        ax.set_ylabel("train domain")
        ax.set_title(matrix.title[:60], fontsize=9)  # the other overrides, if any
    for ax in axes[len(found):]:
        ax.axis("off")
    fig.colorbar(image, ax=list(axes[:len(found)]), label=label, shrink=0.8)
    fig.suptitle(f"Cross-domain {label.lower()} (95 % interval in brackets; grey: not tested)")
    return fig
