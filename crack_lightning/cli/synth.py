"""``crack-synth --out DIR``: write the synthetic dataset (``python -m crack_lightning.cli.synth``)."""

from __future__ import annotations

import argparse
import sys

from crack_lightning.cli.entry import command
from crack_lightning.data.synthetic.defects import DEFECTS
from crack_lightning.data.synthetic.generate import KINDS, generate
from crack_lightning.data.synthetic.styles import STYLE_NAMES


def _what(r: dict) -> str:
    """The dataset in a few words: classes for binary/multiclass, domains for sdnet."""
    if r.get("kind") == "sdnet":
        cracked = sum(n for folder, n in r["counts"].items() if folder.split("/")[1].startswith("C"))
        return f"sdnet {r['per_class']}/domain x 3 domains, {cracked} of {sum(r['counts'].values())} cracked"
    style = f", {r['style']} style" if "style" in r else ""  # kind=binary
    return f"{r['per_class']}/class x {len(r['counts'])} classes ({', '.join(r['counts'])}){style}"


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="crack-synth", description="Generate a synthetic concrete-crack dataset.")
    p.add_argument("--out", required=True, help="output folder (the class folders are created)")
    p.add_argument("--kind", choices=KINDS, default="binary",
                   help="binary: Positive/Negative; multiclass: one folder per defect; sdnet: D/P/W x cracked/uncracked")
    p.add_argument("--per-class", type=int, default=1000, help="images per class (kind=sdnet: per domain)")
    p.add_argument("--classes", help=f"kind=multiclass: comma list of {','.join(DEFECTS)} (default crack,joint,stain,clean)")
    p.add_argument("--crack-share", type=float, help="kind=sdnet: cracked share of each domain (default 0.15)")
    p.add_argument("--style", choices=STYLE_NAMES, default="concrete",
                   help="kind=binary: the surface (crack_lightning/data/synthetic/styles.py), for domain shift")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=227)
    p.add_argument("--workers", type=int, default=1, help="processes; output is identical for any value")
    p.add_argument("--overwrite", action="store_true", help="regenerate even if a complete dataset exists (only files it wrote are replaced)")
    p.add_argument("--layout", choices=["independent", "scenes"], default="independent",
                   help="kind=binary, scenes: cut patches from shared wall scenes, like the real dataset")
    p.add_argument("--tiles", type=int, default=4, help="scenes (kind=sdnet: photos) are tiles x tiles patches")
    a = p.parse_args(argv)
    r = generate(a.out, a.per_class, a.seed, a.size, a.overwrite, a.workers, a.layout, a.tiles,
                 kind=a.kind, classes=a.classes, crack_share=a.crack_share, style=a.style)
    what = "generated" if r["generated"] else "already complete, skipped"
    print(f"synthetic: {what} {_what(r)}, {r['size']}px, seed {r['seed']} -> {r['root']} ({r['seconds']:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
