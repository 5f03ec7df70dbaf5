"""``crack-synth --out DIR``: write the synthetic dataset (``python -m crack_lightning.cli.synth``)."""

from __future__ import annotations

import argparse
import sys

from crack_lightning.cli.entry import command
from crack_lightning.data.synthetic.generate import generate
from crack_lightning.data.synthetic.render import CLASSES


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="crack-synth", description="Generate a synthetic concrete-crack dataset.")
    p.add_argument("--out", required=True, help="output folder (Positive/ and Negative/ are created)")
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=227)
    p.add_argument("--workers", type=int, default=1, help="processes; output is identical for any value")
    p.add_argument("--overwrite", action="store_true", help="regenerate even if a complete dataset exists (only files it wrote are replaced)")
    p.add_argument("--layout", choices=["independent", "scenes"], default="independent",
                   help="scenes: cut patches from shared wall scenes, like the real dataset")
    p.add_argument("--tiles", type=int, default=4, help="scenes are tiles x tiles patches")
    a = p.parse_args(argv)
    r = generate(a.out, a.per_class, a.seed, a.size, a.overwrite, a.workers, a.layout, a.tiles)
    what = "generated" if r["generated"] else "already complete, skipped"
    print(f"synthetic: {what} {r['per_class']}/class x {len(CLASSES)} classes, {r['size']}px, "
          f"seed {r['seed']} -> {r['root']} ({r['seconds']:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
