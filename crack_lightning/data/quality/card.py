"""Dataset card: a short report written next to the data by ``make data``.

``write_card(root)`` validates the ImageFolder at ``root`` (or takes a report from
:func:`crack_lightning.data.quality.validate.validate`) and writes, in ``root``:

* ``dataset_card.md``: counts per class, image sizes and modes, bytes, what the
  validator found, the date, and a licence/citation placeholder;
* ``dataset_card.json``: the full validation report;
* ``dataset_examples.png``: one row of seeded random examples per class.

The three files sit in ``root`` itself, not in a class folder, so they never
become training images and the validator does not check them. Each is written
atomically (a killed run leaves no half card). ``make data`` writes a card only into
a folder it laid out itself: a user's dataset is never written into.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from crack_lightning.data.imagefolder import scan_files  # training's rule for which files are images
from crack_lightning.utils.files import atomic_path, remove_stale_partials, write_atomic

CARD_MD = "dataset_card.md"
CARD_JSON = "dataset_card.json"
EXAMPLES_PNG = "dataset_examples.png"


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def example_grid(root: Path, report: dict, per_class: int = 8, seed: int = 0, tile: int = 112) -> Image.Image:
    """One row per class of ``per_class`` readable images, picked with ``seed``."""
    root = Path(root)
    bad = {p["path"] for kind in report["problems"].values() for p in kind}
    samples, _, _ = scan_files(root, report["classes"])
    base = root.resolve()
    rows = []
    for label, cls in enumerate(report["classes"]):
        files = [rel for s in samples if s.label == label
                 and (rel := s.path.relative_to(base).as_posix()) not in bad]
        rows.append((cls, random.Random(f"{seed}/{cls}").sample(files, min(per_class, len(files)))))
    title_h, row_title_h, gap = 34, 22, 4
    cols = max([per_class] + [len(f) for _, f in rows])
    width = cols * (tile + gap) + gap
    height = title_h + len(rows) * (row_title_h + tile + gap) + gap
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((gap, 8), f"{Path(report['root']).name}: {per_class} random images per class (seed {seed})",
              fill="black", font=_font(18))
    y = title_h
    for cls, files in rows:
        n = report["per_class"][cls]["images"]
        draw.text((gap, y + 3), f"{cls}  ({n:,} images)", fill="black", font=_font(15))
        y += row_title_h
        for k, rel in enumerate(files):
            with Image.open(root / rel) as im:
                thumb = im.convert("RGB")
            thumb.thumbnail((tile, tile))
            grid.paste(thumb, (gap + k * (tile + gap), y))
        y += tile + gap
    return grid


LICENCE_PLACEHOLDER = "_Fill in: where the data comes from, its licence, and how to cite it._"


def _markdown(report: dict, root: Path, licence: str | None = None) -> str:
    from crack_lightning.data.quality.validate import HEADINGS, examples

    t = report["totals"]
    lines = [
        f"# Dataset card: {root.name}",
        "",
        f"Generated {report['created']} by `crack_lightning.data.quality.card` from `{report['root']}`.",
        f"Full validation report: [`{CARD_JSON}`]({CARD_JSON}).",
        "",
        "## Contents",
        "",
        "| class | images | MB | problem files | non-image files |",
        "|---|---:|---:|---:|---:|",
    ]
    for cls in report["classes"]:
        c = report["per_class"][cls]
        lines.append(f"| {cls} | {c['images']:,} | {c['bytes'] / 1e6:.1f} | {c['problem_files']} | "
                     f"{c['non_image_files']} |")
    lines.append(f"| **all** | **{t['images']:,}** | **{t['bytes'] / 1e6:.1f}** | "
                 f"{sum(c['problem_files'] for c in report['per_class'].values())} | "
                 f"{len(report['non_image_files'])} |")
    lines += [
        "",
        f"Total size: {t['bytes']:,} bytes in {t['files']:,} files.",
        "",
        "Image sizes (width x height): " + (", ".join(f"{k}: {v:,}" for k, v in report["sizes"].items()) or "-"),
        "",
        "Modes: " + (", ".join(f"{k}: {v:,}" for k, v in report["modes"].items()) or "-")
        + ". Formats: " + (", ".join(f"{k}: {v:,}" for k, v in report["formats"].items()) or "-") + ".",
        "",
        "## Validation",
        "",
    ]
    counts = report["summary"]["counts"]
    if report["summary"]["clean"]:
        lines.append("No problems found: no broken or non-image files, no exact or near-duplicates "
                     f"(perceptual hash within {report['settings']['near_distance']} bits, then checked "
                     "at pixel level).")
    else:
        lines += ["| check | found | examples |", "|---|---:|---|"]
        for key, title in HEADINGS:
            if counts.get(key):
                ex = "; ".join(f"`{e}`" for e in examples(report, key)[:3])
                more = f" (+{counts[key] - 3} more)" if counts[key] > 3 else ""
                lines.append(f"| {title} | {counts[key]} | {ex}{more} |")
    lines += [
        "",
        "## Examples",
        "",
        f"![examples]({EXAMPLES_PNG})",
        "",
        "## Licence and citation",
        "",
        licence or LICENCE_PLACEHOLDER,
        "",
    ]
    return "\n".join(lines)


def write_card(root: Path, report: dict | None = None, per_class: int = 8, seed: int = 0,
               licence: str | None = None) -> Path:
    """Write ``dataset_card.md``, ``dataset_card.json`` and ``dataset_examples.png`` in
    ``root``; validate ``root`` first when no ``report`` is given. Returns the .md path.

    ``licence``: Markdown for the "Licence and citation" section (default: the
    :data:`LICENCE_PLACEHOLDER` line, to be filled in)."""
    root = Path(root)
    if report is None:
        from crack_lightning.data.quality.validate import validate

        report = validate(root)
    remove_stale_partials(root, "dataset_*")  # what a killed card writer left
    write_atomic(root / CARD_JSON, json.dumps(report, indent=2) + "\n")
    with atomic_path(root / EXAMPLES_PNG) as tmp:
        example_grid(root, report, per_class=per_class, seed=seed).save(tmp, "PNG", optimize=True)
    return write_atomic(root / CARD_MD, _markdown(report, root, licence))  # last: says the card is whole
