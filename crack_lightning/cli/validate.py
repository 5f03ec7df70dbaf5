"""``crack-validate ROOT``: check an ImageFolder and print the report (``python -m crack_lightning.cli.validate``).

Exit status: 0 clean, 1 problems found, 2 a setting or path the user must fix.
"""

from __future__ import annotations

import argparse
import sys
import json
import os
from pathlib import Path

from crack_lightning import CrackLightningError
from crack_lightning.cli.entry import command
from crack_lightning.data.quality.validate import HEADINGS, NEAR_DISTANCE, examples, validate
from crack_lightning.utils.files import is_within, write_atomic


def print_report(report: dict, console=None, max_examples: int = 3) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"Dataset {report['root']}", title_justify="left")
    for col in ("class", "images", "MB", "problem files", "non-image files"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for cls in report["classes"]:
        c = report["per_class"][cls]
        table.add_row(cls, f"{c['images']:,}", f"{c['bytes'] / 1e6:.1f}", str(c["problem_files"]),
                      str(c["non_image_files"]))
    t = report["totals"]
    table.add_row("all", f"{t['images']:,}", f"{t['bytes'] / 1e6:.1f}",
                  str(sum(c["problem_files"] for c in report["per_class"].values())),
                  str(len(report["non_image_files"])), style="bold")
    console.print(table)

    def top(counter: dict, n=4):
        items = list(counter.items())
        more = f", ... ({len(items) - n} more)" if len(items) > n else ""
        return ", ".join(f"{k} x{v:,}" for k, v in items[:n]) + more

    console.print(f"sizes: {top(report['sizes']) or '-'}")
    console.print(f"modes: {top(report['modes']) or '-'};  formats: {top(report['formats']) or '-'}")
    if report["splits"] is not None:
        console.print(f"splits.csv: {report['splits']['rows']:,} rows {report['splits']['counts']}")

    counts = report["summary"]["counts"]
    checks = Table(title="Checks", title_justify="left", show_lines=False)
    checks.add_column("check")
    checks.add_column("found", justify="right")
    checks.add_column(f"first {max_examples}", overflow="fold")
    for key, title in HEADINGS:
        if key not in counts:
            continue
        n = counts[key]
        ex = examples(report, key)[:max_examples] if n else []
        checks.add_row(title, f"[red]{n}[/red]" if n else "[green]0[/green]", "\n".join(ex))
    console.print(checks)
    if report["ignored"]:  # not findings: training leaves them out the same way
        ex = "; ".join(f"{i['path']} ({i['reason']})" for i in report["ignored"][:max_examples])
        console.print(f"left out, as training does: {len(report['ignored'])} (first {max_examples}: {ex})")
    s = report["seconds"]
    verdict = "[green]clean[/green]" if report["summary"]["clean"] else "[red]problems found[/red]"
    console.print(f"{verdict}: {t['images']:,} images checked in {s['total']:.1f} s "
                  f"({report['near_candidates_checked']} near-duplicate candidates checked at pixel level)")


def check_report_path(path: Path, root: Path) -> None:
    """Refuse, before the scan, a ``--json`` path that cannot be written or lies inside ROOT."""
    if path.is_dir():
        raise CrackLightningError(f"--json {path}: is a folder; give a file name, e.g. {path / 'report.json'}.")
    if root.is_dir() and is_within(path.parent, root):
        raise CrackLightningError(
            f"--json {path}: inside the dataset {root}, which validate only reads; write the report elsewhere.")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise CrackLightningError(
            f"--json {path}: cannot be written, {folder} is a file, not a folder; give a path in a folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CrackLightningError(
            f"--json {path}: cannot be written, {folder} is not writable for you; give another path.")


def write_report(report: dict, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(report, indent=2) + "\n")  # a killed run leaves no half report
    except OSError as err:
        raise CrackLightningError(f"--json {path}: cannot be written ({err}); give another path.") from None


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="crack-validate",
        description="Check an ImageFolder dataset: counts, sizes, broken files, duplicates, split leaks.")
    p.add_argument("root", help="dataset folder with one sub-folder per class")
    p.add_argument("--splits", help="a splits.csv (path,label,split) to check for leaks between splits")
    p.add_argument("--json", help="write the full report here (paths relative to ROOT; not inside ROOT)")
    p.add_argument("--positive-class", metavar="FOLDER", default=None,
                   help="the crack class folder, as data.positive_class tells training (default: "
                        "recognised by name: Positive, crack, cracked, ...)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all available cores)")
    p.add_argument("--near-distance", type=int, default=NEAR_DISTANCE,
                   help=f"max perceptual-hash distance (of 64 bits) checked for near-duplicates (default {NEAR_DISTANCE})")
    p.add_argument("--examples", type=int, default=3, help="examples shown per finding on the terminal")
    a = p.parse_args(argv)
    from rich.console import Console

    console = Console()
    if not 0 <= a.near_distance <= 64:
        raise CrackLightningError(f"--near-distance {a.near_distance}: give a number of bits from 0 to 64.")
    if a.workers is not None and a.workers < 1:
        raise CrackLightningError(f"--workers {a.workers}: give at least 1.")
    if a.json:  # before the scan, which may take minutes
        check_report_path(Path(a.json), Path(a.root))
    report = validate(a.root, a.splits, workers=a.workers, near_distance=a.near_distance,
                      progress=console.is_terminal, positive_class=a.positive_class)
    if a.json:
        write_report(report, Path(a.json))
    print_report(report, console, max_examples=a.examples)
    if a.json:
        console.print(f"report: {a.json}")
    return 0 if report["summary"]["clean"] else 1


if __name__ == "__main__":
    sys.exit(main())
