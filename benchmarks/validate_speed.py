"""How fast does the dataset validator check a real-sized dataset?

    python benchmarks/validate_speed.py                    # 2 x 20,000 synthetic 227x227 JPEGs
    python benchmarks/validate_speed.py --per-class 1000   # a quick look

Generates (or reuses, when complete) ``--per-class`` synthetic images per class under
``--root`` (default ``data/bench_validate``, git-ignored), then times
``crack_lightning.data.quality.validate.validate`` on it and prints images/s, the seconds of
each stage and what machine it ran on. The target is 40,000 images in at most
2 minutes on a 2-core CPU. Run it on a quiet machine: other load skews it.
Files just generated (or read by an earlier repeat) are in the OS page cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path



def machine_info() -> dict:
    import numpy
    import PIL
    from PIL import features

    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        import imagehash

        ih = imagehash.__version__
    except Exception:  # noqa: BLE001
        ih = None
    from crack_lightning.utils.parallel import available_cores

    return {
        "cpu": cpu or platform.processor(),
        "cores_available": available_cores(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "libjpeg_turbo": features.check_feature("libjpeg_turbo"),
        "imagehash": ih,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--per-class", type=int, default=20_000, help="synthetic images per class (default 20,000)")
    p.add_argument("--root", type=Path, default=Path("data/bench_validate"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gen-workers", type=int, default=2, help="processes generating the images")
    p.add_argument("--workers", type=int, default=None, help="validator processes (default: all available cores)")
    p.add_argument("--near-distance", type=int, default=None, help="validator --near-distance (default: its own)")
    p.add_argument("--repeat", type=int, default=1, help="time the validator this many times")
    p.add_argument("--json", type=Path, help="also write the results here")
    a = p.parse_args(argv)

    from crack_lightning.data.synthetic.generate import generate
    from crack_lightning.data.quality.validate import NEAR_DISTANCE, validate

    info = machine_info()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    gen = generate(a.root, per_class=a.per_class, seed=a.seed, workers=a.gen_workers)
    what = f"generated in {gen['seconds']:.0f} s" if gen["generated"] else "reused"
    print(f"data: {a.root} ({a.per_class:,} per class, {what})", flush=True)

    near = NEAR_DISTANCE if a.near_distance is None else a.near_distance
    runs = []
    for k in range(a.repeat):
        t0 = time.perf_counter()
        report = validate(a.root, workers=a.workers, near_distance=near)
        seconds = time.perf_counter() - t0
        n = report["totals"]["images"]
        runs.append({"seconds": round(seconds, 2), "images": n, "images_per_s": round(n / seconds, 1),
                     "stages": report["seconds"], "near_candidates_checked": report["near_candidates_checked"],
                     "clean": report["summary"]["clean"]})
        print(f"run {k + 1}: {n:,} images in {seconds:.1f} s = {n / seconds:,.0f} images/s "
              f"on {report['settings']['workers']} workers; stages {report['seconds']}; "
              f"{report['near_candidates_checked']} near-duplicate candidates checked; "
              f"clean={report['summary']['clean']}", flush=True)
        if not report["summary"]["clean"]:
            print("  findings: " + json.dumps({k: v for k, v in report["summary"]["counts"].items() if v}))
    best = min(r["seconds"] for r in runs)
    print(f"best: {best:.1f} s for {runs[0]['images']:,} images "
          f"(target for 40,000 on 2 cores: <= 120 s)")
    result = {"machine": info, "per_class": a.per_class, "near_distance": near, "runs": runs}
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
