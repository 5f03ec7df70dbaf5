"""Whole-photo prediction time: one phone-sized photo, window by window, on this machine.

    python benchmarks/whole_photo.py                         # 4032x3024, MobileNetV2 at 96 px
    python benchmarks/whole_photo.py --image-size 224        # the backbone's own input size
    python benchmarks/whole_photo.py --ckpt <run>/checkpoints/best.ckpt --size 1008x756

Renders a synthetic wall photo (:func:`crack_lightning.data.synthetic.scenes.render_scene`, cropped
to ``--size``) and, unless ``--ckpt`` is given, writes an *untrained* MobileNetV2
checkpoint built with ``pretrained=false`` the way ``train.py`` saves one (weights do not
change the time). Then it times what ``predict.py tile=true`` does per photo -- load the
photo, every window through the model, verdict, per-tile CSV and heatmap PNG written --
and prints the tiles, the seconds and the peak resident memory of that part. The
result is appended to BENCHMARKS.md with the machine, versions and command.

The default input size, 96 px, is the ``make demo`` model's. The model is nearly all of
the time (910 windows for 4032x3024 at the default stride); at the backbone's own 224 px
(``--image-size 224``) each window is about twice the work of the 160 px inference rows
above in BENCHMARKS.md (80-110 images/s on 2 cores): near the 46 windows/s 20 s allows.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from records import append_record
from crack_lightning.data.augmentation import eval_transform
from crack_lightning.data.synthetic.scenes import render_scene
from crack_lightning.inference import tiling
from crack_lightning.inference.backends import open_backend
from crack_lightning.model_card import ModelCard

CONF = Path(__file__).resolve().parents[1] / "conf"


def build_checkpoint(path: Path, backbone: str, image_size: int, patch: int = 227) -> Path:
    """A checkpoint as train.py writes it (config, class names, preprocessing, weights),
    without training: composed from conf/ like train.py, random weights."""
    work = path.parent
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            f"backbone={backbone}", "backbone.pretrained=false", f"data.image_size={image_size}",
            f"paths.data_dir={work}", f"paths.log_dir={work}", f"paths.output_dir={work}"])
    OmegaConf.resolve(cfg)
    torch.manual_seed(0)  # the same random weights, the same verdict, every run
    model = instantiate(cfg.model)
    dm = instantiate(cfg.data, data_config=model.data_config)
    preprocessing = dataclasses.replace(dm.preprocessing(), patch_size=(patch, patch))
    model.card = ModelCard(["Negative", "Positive"], preprocessing, config=OmegaConf.to_container(cfg, resolve=True))
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def render_photo(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A synthetic wall photo with cracks: a square scene of the long side, cropped."""
    side = max(width, height)
    tiles = max(1, round(side / 227))
    rgb, _ = render_scene(np.random.default_rng([seed, 7]), tiles, -(-side // tiles))
    Image.fromarray(rgb[:height, :width]).save(path, "JPEG", quality=90)
    return path


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS counter (VmHWM) so rendering the photo does not count."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mib(field: str = "VmHWM") -> float:
    """Peak (VmHWM) or current (VmRSS) resident memory of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description="Time whole-photo (tile=true) prediction of one photo.")
    p.add_argument("--size", default="4032x3024", help="photo WIDTHxHEIGHT in px")
    p.add_argument("--ckpt", help="a checkpoint or .onnx; default: an untrained MobileNetV2 built here")
    p.add_argument("--backbone", default="mobilenetv2")
    p.add_argument("--image-size", type=int, default=96, help="model input px (96: the `make demo` model)")
    p.add_argument("--batch-size", type=int, default=16, help="predict.py's batch_size=auto on a CPU")
    p.add_argument("--stride", type=int, default=None, help="tile stride in px; default half the patch")
    p.add_argument("--threads", type=int, default=None, help="torch threads; default torch's own")
    p.add_argument("--work", default="data/bench/whole_photo")
    p.add_argument("--out", default="BENCHMARKS.md")
    args = p.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    photo_path = work / f"wall_{width}x{height}.jpg"
    if not photo_path.exists():
        render_photo(photo_path, width, height)
    ckpt = Path(args.ckpt) if args.ckpt else build_checkpoint(
        work / f"{args.backbone}_{args.image_size}.ckpt", args.backbone, args.image_size)

    start = time.perf_counter()
    backend = open_backend(ckpt, "cuda" if torch.cuda.is_available() else "cpu")
    load_s = time.perf_counter() - start
    size = backend.card.preprocessing.native_size
    stride = (args.stride, args.stride) if args.stride else tuple(max(1, s // 2) for s in size)
    transform = eval_transform(backend.card.preprocessing.to_timm_data_config())
    backend(transform(torch.zeros(1, 3, *size, dtype=torch.uint8)))  # first-call set-up is not per photo
    measured_peak = reset_peak_rss()
    before = rss_mib("VmRSS")  # torch, Lightning and the model: not the photo's

    start = time.perf_counter()
    photo = tiling.load_photo(photo_path)
    result, _ = tiling.predict_photo(photo, backend, transform, backend.card.threshold, size, stride, args.batch_size,
                                     work / "tiles.csv", work / "heatmap.png", {"max_side": 1600})
    seconds = time.perf_counter() - start
    peak = rss_mib()
    verdict = "crack" if result.verdict(backend.card.threshold) else "no crack"
    print(f"{width}x{height}: {result.tiles} tiles of {size[0]}x{size[1]} every {stride[0]} px, "
          f"{seconds:.2f} s ({result.tiles / seconds:.1f} tiles/s), verdict {verdict}, "
          f"peak RSS {peak:.0f} MiB{'' if measured_peak else ' (whole process)'} (+{peak - before:.0f} over the "
          f"{before:.0f} MiB before the photo); model load {load_s:.2f} s")

    pre = backend.card.preprocessing
    settings = (f"{Path(ckpt).name} ({'given' if args.ckpt else 'untrained, pretrained=false'}), "
                f"input {pre.input_size[0]}x{pre.input_size[1]} px, batch {args.batch_size}, "
                f"torch threads {torch.get_num_threads()}")
    append_record(args.out, "whole photo", settings, [
        "| photo | tiles | window / stride px | seconds (load photo → verdict, CSV, heatmap) | tiles/s | peak RSS MiB | rise during the photo MiB |",
        "|---|---|---|---|---|---|---|",
        f"| {width}x{height} | {result.tiles} | {size[0]} / {stride[0]} | {seconds:.2f} | {result.tiles / seconds:.1f} | "
        f"{peak:.0f}{'' if measured_peak else ' (process)'} | +{peak - before:.0f} |"])


if __name__ == "__main__":
    main()
