"""Export formats side by side: fp32 ONNX vs INT8 ONNX, speed on the same images and the test split's drops.

    python benchmarks/export_formats.py --ckpt outputs/demo/runs/<run>/checkpoints/best.ckpt
    python benchmarks/export_formats.py --ckpt <run>/checkpoints/best.ckpt --batch-sizes 1,16 --rounds 7

Exports the checkpoint twice with ``export.py``'s own task (``format=onnx`` and
``format=onnx-int8``, into ``--work``, the int8 gate's limits opened so that both files are
always written and the drops reported), then times both files in this one process on the
same test images of the run's ``splits.csv`` (uint8 at the model's input size, as the
pipelines hand them over), alternating fp32 and int8 each round and keeping each one's best
round. Recall and accuracy are the int8 gate's: crack or not at the model's operating
threshold on the whole test split. The table is appended to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from hydra import compose, initialize_config_dir

from records import append_record
from crack_lightning.export.quantize import Pixels
from crack_lightning.export.run import export, split_samples
from crack_lightning.inference.checkpoint import load_classifier
from crack_lightning.inference.onnx_backend import OnnxBackend

CONF = Path(__file__).resolve().parents[1] / "conf"


def export_both(ckpt: Path, work: Path, calibration_images: int) -> dict[str, dict]:
    results = {}
    for fmt in ("onnx", "onnx-int8"):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="export", overrides=[
                f"ckpt={ckpt}", f"format={fmt}", f"output={work / f'{fmt}.onnx'}", "overwrite=true",
                f"calibration_images={calibration_images}", "max_recall_drop=1", "max_accuracy_drop=1",
                f"paths.log_dir={work / 'logs'}"])
        results[fmt] = export(cfg)
    return results


def images_per_second(backends: dict[str, OnnxBackend], pixels: np.ndarray, batch: int, rounds: int) -> dict:
    """Best round of each backend over ``pixels`` in batches of ``batch``, rounds alternating."""
    best = {name: float("inf") for name in backends}
    for name, backend in backends.items():  # warm-up: first-run allocations are not the steady state
        backend(pixels[:batch])
    for _ in range(rounds):
        for name, backend in backends.items():
            start = time.perf_counter()
            for i in range(0, len(pixels), batch):
                backend(pixels[i:i + batch])
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: len(pixels) / seconds for name, seconds in best.items()}


def main() -> None:
    p = argparse.ArgumentParser(description="Time fp32 vs INT8 ONNX exports of one checkpoint, side by side.")
    p.add_argument("--ckpt", required=True, help="<run>/checkpoints/best.ckpt with its run's splits.csv and data")
    p.add_argument("--images", type=int, default=256, help="test images timed (the drops use the whole test split)")
    p.add_argument("--batch-sizes", default="1,16", help="batch sizes timed, comma-separated")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per file and batch size (best kept)")
    p.add_argument("--calibration-images", type=int, default=200, help="export.py's calibration_images")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads; default its own")
    p.add_argument("--work", default="data/bench/export_formats")
    p.add_argument("--out", default="BENCHMARKS.md")
    args = p.parse_args()

    ckpt, work = Path(args.ckpt), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = export_both(ckpt, work, args.calibration_images)
    gate = results["onnx-int8"]["int8"]
    loaded = load_classifier(ckpt)
    test = [s.path for s in split_samples(loaded, "test")]
    pixels = Pixels(loaded)(test[:: max(1, len(test) // args.images)][:args.images])
    backends = {name: OnnxBackend(results[fmt]["output"], threads=args.threads)
                for name, fmt in (("fp32", "onnx"), ("int8", "onnx-int8"))}
    rows = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        speed = images_per_second(backends, pixels, batch, args.rounds)
        rows.append(f"| {batch} | {speed['fp32']:.0f} | {speed['int8']:.0f} | {speed['int8'] / speed['fp32']:.2f}x |")
    sizes = {name: Path(results[fmt]["output"]).stat().st_size / 1e6 for name, fmt in (("fp32", "onnx"), ("int8", "onnx-int8"))}
    pre = loaded.card.preprocessing
    settings = (f"{ckpt}, input {pre.input_size[0]}x{pre.input_size[1]} {pre.interpolation}; {len(pixels)} test "
                f"images timed, best of {args.rounds} alternating rounds; onnxruntime {ort.__version__}, threads "
                f"{args.threads or 'default'}; {gate['calibration_images']} calibration (val) images")
    body = [
        "| batch | fp32 img/s | int8 img/s | int8 / fp32 |", "| --- | --- | --- | --- |", *rows, "",
        f"Test split ({gate['test_images']} images) at the operating threshold {gate['threshold']:.4g}: "
        f"recall {gate['fp32']['recall']:.4f} (fp32) vs {gate['int8']['recall']:.4f} (int8), drop "
        f"{gate['recall_drop']:.4f}; accuracy {gate['fp32']['accuracy']:.4f} vs {gate['int8']['accuracy']:.4f}, drop "
        f"{gate['accuracy_drop']:.4f}. Files: {sizes['fp32']:.1f} MB fp32, {sizes['int8']:.1f} MB int8. fp32 vs "
        f"PyTorch: max |dp| {results['onnx']['max_abs_diff']:.2e} on the same pixels, "
        f"{results['onnx']['resize_abs_diff']:.2e} resized in the graph.",
    ]
    append_record(args.out, "export formats (fp32 vs INT8 ONNX)", settings, body)


if __name__ == "__main__":
    main()
