"""``crack-sweep-summary <sweep folder>``: rebuild a sweep's summary.csv/.md/.png
(``python -m crack_lightning.cli.sweep_summary``); exit 1 if a job failed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crack_lightning import CrackLightningError
from crack_lightning.cli.entry import command
from crack_lightning.sweeps.summary import SUMMARY_MD, write_summary


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="crack-sweep-summary", description=__doc__.splitlines()[0].strip("`"))
    p.add_argument("sweep_dir", type=Path, help="the folder that holds the job folders (hydra.sweep.dir)")
    sweep_dir = p.parse_args(argv).sweep_dir
    if not sweep_dir.is_dir():
        raise CrackLightningError(f"No sweep folder at {sweep_dir}: give the folder that holds the job folders "
                                  "(hydra.sweep.dir).")
    jobs = write_summary(sweep_dir)
    if not jobs:
        raise CrackLightningError(f"No job folders (with .hydra/overrides.yaml) under {sweep_dir}.")
    failed = [j for j in jobs if not j.ok]
    print(f"{sweep_dir / SUMMARY_MD}: {len(jobs)} jobs, {len(failed)} failed")
    for j in failed:
        print(f"  job {j.job} {j.status}: {j.error}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
