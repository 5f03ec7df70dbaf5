"""``python -m crack_lightning.cli.shift_report <folder>``: the table of a ``make shift-demo`` folder,
printed and written to ``<folder>/shift.md``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crack_lightning.cli.entry import command
from crack_lightning.reports.shift import shift_table


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="shift_report", description=__doc__.splitlines()[0].strip("`"))
    p.add_argument("folder", type=Path, help="the outputs/shift/<time>/ folder make shift-demo wrote")
    print(shift_table(p.parse_args(argv).folder), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
