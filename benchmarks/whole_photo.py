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
from crack_lightning.data.synthetic.scenes import patch_label, render_scene
from crack_lightning.inference import tiling
from crack_lightning.inference.backends import open_backend
from crack_lightning.inference.photos import PhotoScorer
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


def render_photo(path: Path, width: int, height: int, seed: int) -> Path:
    """A synthetic wall photo (a square scene of the long side, cropped) and its crack mask
    beside it (``<stem>.mask.png``, 0-255): the truth each window is scored against."""
    side = max(width, height)
    tiles = max(1, round(side / 227))
    rgb, mask = render_scene(np.random.default_rng([seed, 7]), tiles, -(-side // tiles))
    Image.fromarray(rgb[:height, :width]).save(path, "JPEG", quality=90)
    Image.fromarray(np.round(mask[:height, :width] * 255).astype(np.uint8)).save(mask_path(path))
    return path


def mask_path(photo: Path) -> Path:
    return photo.with_name(f"{photo.stem}.mask.png")


def window_truth(mask: np.ndarray, wins) -> np.ndarray:
    """Each window's label by the scenes dataset's own rule (:func:`patch_label`): 1 crack, 0 none,
    -1 a crack in the margin only (left out of recall and false alarms, as the dataset drops it)."""
    labels = [patch_label(mask[t:t + h, l:l + w]) for t, l, h, w in wins]
    return np.array([-1 if y is None else y for y in labels])


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


def time_mode(mode: str, backend, photo_path: Path, work: Path, args) -> tuple[tiling.PhotoScores, dict]:
    """What predict.py tile=true does for one photo in ``mode``: load, score, verdict, CSV, heatmap."""
    scorer = PhotoScorer(backend, None, args.stride, mode, args.batch_size, args.block_megapixels)
    with Image.open(photo_path) as img, Image.new("RGB", img.size) as blank:
        scorer(blank)  # first-call set-up (the dense module, oneDNN's kernels for each block shape) is not per photo
    measured_peak = reset_peak_rss()
    before = rss_mib("VmRSS")  # torch, Lightning and the model: not the photo's
    start = time.perf_counter()
    photo = tiling.load_photo(photo_path)
    scores = scorer(photo, work / f"tiles_{mode}.csv")
    threshold = backend.card.threshold
    result = scores.at(threshold)
    tiling.write_heatmap(photo, scores.grid, result, threshold, work / f"heatmap_{mode}.png", max_side=1600)
    seconds = time.perf_counter() - start
    peak = rss_mib()
    return scores, dict(mode=scorer.mode, tiles=result.tiles, stride=scorer.used_stride()[0], seconds=seconds,
                        verdict="crack" if result.verdict(threshold) else "no crack", peak=peak, rise=peak - before,
                        process=not measured_peak, describe=scorer.describe())


def agreement(dense_scores: tiling.PhotoScores, backend, photo_path: Path, batch_size: int) -> str:
    """How dense mode's windows agree with the same windows cropped and scored as patches, and
    how each finds the planted cracks."""
    photo = tiling.load_photo(photo_path)
    transform = eval_transform(backend.card.preprocessing.to_timm_data_config())
    crops = np.concatenate([np.asarray(backend(x), np.float32) for _, x in tiling.batches(
        np.asarray(photo), dense_scores.windows(), batch_size, transform)])
    p, t = dense_scores.probabilities, backend.card.threshold
    diff = np.abs(crops - p)
    corr = float(np.corrcoef(crops, p)[0, 1]) if crops.std() > 0 else float("nan")
    with Image.open(mask_path(photo_path)) as m:
        truth = window_truth(np.asarray(m, np.float32) / 255, dense_scores.windows())
    sure = truth >= 0  # where a crack only clips the margin, context outside the window may rightly differ
    return (f"max |dp| = {diff.max():.4f} (mean {diff.mean():.4f}, 99th percentile {np.quantile(diff, 0.99):.4f}; "
            f"{diff[sure].max() if sure.any() else float('nan'):.4f} over the windows with a definite label), "
            f"correlation {corr:.4f}; above the threshold {t:.3g}: {int((p > t).sum())} dense, {int((crops > t).sum())} "
            f"cropped, the same verdict for {np.mean((p > t) == (crops > t)):.1%} of the windows; against the planted "
            f"cracks ({int((truth == 1).sum())} crack windows, {int((truth == 0).sum())} clean, {int((truth < 0).sum())} "
            f"with a crack in the margin only, left out): {found(p, truth, t)} (dense), {found(crops, truth, t)} (cropped)")


def found(p: np.ndarray, truth: np.ndarray, threshold: float) -> str:
    said = p > threshold
    recall = f"{said[truth == 1].mean():.3f}" if (truth == 1).any() else "n/a"
    return f"recall {recall}, false alarms {said[truth == 0].mean():.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description="Time whole-photo (tile=true) prediction of one photo, dense and windows.")
    p.add_argument("--size", default="4032x3024", help="photo WIDTHxHEIGHT in px")
    p.add_argument("--ckpt", help="a checkpoint or .onnx; default: an untrained MobileNetV2 built here")
    p.add_argument("--backbone", default="mobilenetv2")
    p.add_argument("--image-size", type=int, default=96, help="model input px (96: the `make demo` model)")
    p.add_argument("--batch-size", type=int, default=16, help="predict.py's batch_size=auto on a CPU")
    p.add_argument("--stride", type=int, default=None, help="tile stride in px; default half the patch")
    p.add_argument("--modes", default="dense,windows", help="tile modes timed side by side, in this order")
    p.add_argument("--block-megapixels", type=float, default=0.8, help="dense mode's tiles (tile_block_megapixels)")
    p.add_argument("--threads", type=int, default=None, help="torch threads; default torch's own")
    p.add_argument("--seed", type=int, default=1, help="the synthetic wall's (1: cracks planted; 0: a clean wall)")
    p.add_argument("--work", default="data/bench/whole_photo")
    p.add_argument("--out", default="BENCHMARKS.md")
    args = p.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    photo_path = work / f"wall_{width}x{height}_{args.seed}.jpg"
    if not (photo_path.exists() and mask_path(photo_path).exists()):
        render_photo(photo_path, width, height, args.seed)
    ckpt = Path(args.ckpt) if args.ckpt else build_checkpoint(
        work / f"{args.backbone}_{args.image_size}.ckpt", args.backbone, args.image_size)
    backend = open_backend(ckpt, "cuda" if torch.cuda.is_available() else "cpu")

    runs = {}
    for mode in args.modes.split(","):
        scores, runs[mode] = time_mode(mode, backend, photo_path, work, args)
        if mode == "dense":
            dense_scores = scores
        r = runs[mode]
        print(f"{width}x{height} {r['describe']}: {r['tiles']} tiles, {r['seconds']:.2f} s "
              f"({r['tiles'] / r['seconds']:.1f} tiles/s), verdict {r['verdict']}, peak RSS {r['peak']:.0f} MiB "
              f"(+{r['rise']:.0f} during the photo)")
    rows = [f"| {width}x{height} | {r['mode']} | {r['tiles']} | {r['stride']} | {r['seconds']:.2f} | "
            f"{r['tiles'] / r['seconds']:.1f} | {r['verdict']} | {r['peak']:.0f}{' (process)' if r['process'] else ''} | "
            f"+{r['rise']:.0f} |" for r in runs.values()]
    notes = []
    if {"dense", "windows"} <= set(runs) and runs["dense"]["mode"] == "dense":
        speedup = runs["windows"]["seconds"] / runs["dense"]["seconds"]
        notes.append(f"Dense {speedup:.2f}x faster than windows; dense mode's {runs['dense']['tiles']} windows against "
                     f"the same windows cropped and scored as patches: {agreement(dense_scores, backend, photo_path, args.batch_size)}; "
                     f"photo verdicts {runs['dense']['verdict']} (dense) / {runs['windows']['verdict']} (windows).")
        print(notes[-1])
    pre = backend.card.preprocessing
    settings = (f"{Path(ckpt).name} ({'given' if args.ckpt else 'untrained, pretrained=false'}), "
                f"input {pre.input_size[0]}x{pre.input_size[1]} px, batch {args.batch_size}, dense tiles "
                f"{args.block_megapixels:g} Mpx, torch threads {torch.get_num_threads()}, wall seed {args.seed}")
    append_record(args.out, "whole photo", settings, [
        "| photo | mode | tiles | stride px | seconds (load photo → verdict, CSV, heatmap) | tiles/s | verdict | "
        "peak RSS MiB | rise during the photo MiB |",
        "|---|---|---|---|---|---|---|---|---|", *rows, "", *notes])


if __name__ == "__main__":
    main()
