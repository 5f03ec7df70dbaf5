"""The settings of ``predict.py``, ``export.py``, ``evaluate.py`` and ``recalibrate.py``, checked
before torch is imported.

Importing torch, timm and Lightning takes seconds; a typo (``threshold=abc``), an impossible
value (``heatmap.max_side=0``, which used to fail after the first photo) or a wrong file
(``ckpt=`` a text file, ``export.py ckpt=best.onnx``) is refused before that, in one line.
The entry scripts call :func:`check_predict` / :func:`check_export` first; ``predict()`` and
``export()`` call them too, for in-process callers. Only ``device=cuda`` needs torch, to ask
whether there is a GPU.
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from crack_lightning import CrackLightningError
from crack_lightning.config_checks import check_types
from crack_lightning.utils.checks import is_count, is_number
from crack_lightning.utils.files import sha256_file
from crack_lightning.inference.model_files import (ONNX, dense_paths, export_origin, onnx_metadata,
                                                   require_model_file, sniff)

FORMATS = ("onnx", "onnx-int8")
DEVICES = r"auto|cpu|cuda(:\d+)?"
HEATMAP_SIDES = (64, 8192)  # px of the PNG: smaller is illegible; larger, a canvas of hundreds of MB per photo


def _size(value) -> bool:
    return (is_count(value) and value >= 1) or (
        isinstance(value, (list, tuple)) and len(value) == 2 and all(is_count(v) and v >= 1 for v in value))


def _colormap(value) -> bool:
    import matplotlib  # here: only this check needs it (0.2 s)

    return isinstance(value, str) and value in matplotlib.colormaps


# key -> (what the value must be, the test, whether null passes): config_checks.check_types' table
PREDICT_RULES = {
    "threshold": ("a probability in [0, 1], or null: the model's", lambda v: is_number(v) and 0 <= v <= 1, True),
    "batch_size": ("auto or a whole number >= 1", lambda v: v == "auto" or (is_count(v) and v >= 1), False),
    "num_workers": ("auto or a whole number >= 0", lambda v: v == "auto" or (is_count(v) and v >= 0), False),
    "device": ("auto, cpu, cuda or cuda:N", lambda v: isinstance(v, str) and bool(re.fullmatch(DEVICES, v)), False),
    "gradcam": ("a whole number >= 0", lambda v: is_count(v) and v >= 0, False),
    "tile": ("true or false", lambda v: isinstance(v, bool), False),
    "tile_size": ("pixels: a whole number >= 1 or [height, width]; null: the training patch size", _size, True),
    "tile_stride": ("pixels: a whole number >= 1 or [height, width]; null: half the window", _size, True),
    "tile_mode": ("auto, dense or windows", lambda v: v in ("auto", "dense", "windows"), False),
    "tile_block_megapixels": ("a number of megapixels from 0.1 to 1000", lambda v: is_number(v) and 0.1 <= v <= 1000,
                              False),
    "heatmap.max_side": (f"a whole number of pixels from {HEATMAP_SIDES[0]} to {HEATMAP_SIDES[1]}",
                         lambda v: is_count(v) and HEATMAP_SIDES[0] <= v <= HEATMAP_SIDES[1], False),
    "heatmap.alpha": ("a number in [0, 1]", lambda v: is_number(v) and 0 <= v <= 1, False),
    "heatmap.cmap": ("a matplotlib colormap name, e.g. turbo or viridis", _colormap, False),
}
POINT_RULE = ("the name of one of the model's operating points (recalibrate.py name=), or null: its own",
              lambda v: isinstance(v, str) and bool(v.strip()), True)
PREDICT_RULES["operating_point"] = POINT_RULE
EVALUATE_RULES = {"operating_point": POINT_RULE,
                  "confident": ("true or false", lambda v: isinstance(v, bool), False)}
EXPORT_RULES = {
    "operating_point": POINT_RULE,
    "opset": ("a whole number", is_count, False),
    "check": ("true or false", lambda v: isinstance(v, bool), False),
    "check_images": ("a whole number >= 1, or null: 8", lambda v: is_count(v) and v >= 1, True),
    "atol": ("a number >= 0", lambda v: is_number(v) and v >= 0, False),
    "resize_atol": ("a number >= 0", lambda v: is_number(v) and v >= 0, False),
    "calibration_images": ("a whole number >= 1", lambda v: is_count(v) and v >= 1, False),
    "max_recall_drop": ("a number in [0, 1]", lambda v: is_number(v) and 0 <= v <= 1, False),
    "max_accuracy_drop": ("a number in [0, 1]", lambda v: is_number(v) and 0 <= v <= 1, False),
    "overwrite": ("true or false", lambda v: isinstance(v, bool), False),
}


def _required(cfg: DictConfig, key: str, usage: str) -> None:
    if OmegaConf.is_missing(cfg, key) or not cfg.get(key):
        raise CrackLightningError(f"{key}= is required: {usage}")


def _check_model_command(cfg: DictConfig, rules: dict, usage: str, required: tuple[str, ...] = ("ckpt",)) -> None:
    """A command that runs a model file: its required keys, its settings' ``rules``, the device, the file."""
    for key in required:
        _required(cfg, key, usage)
    check_types(cfg, rules)
    check_device(str(cfg.device))
    require_model_file(cfg.ckpt, onnx_ok=True)


def check_predict(cfg: DictConfig) -> None:
    """Refuse a missing or impossible predict.py setting, or a ckpt= that is no model file."""
    _check_model_command(cfg, PREDICT_RULES, "python predict.py ckpt=<run>/checkpoints/best.ckpt "
                         "input=<image|folder|glob>", ("ckpt", "input"))


def check_evaluate(cfg: DictConfig, usage: str = "python evaluate.py ckpt=<best.ckpt|model.onnx> data.root=<folder>") -> None:
    """Refuse a missing or impossible evaluate.py / recalibrate.py setting, or a ckpt= that is no model file."""
    from crack_lightning.config_checks import check_config

    _required(cfg, "ckpt", usage)
    check_types(cfg, EVALUATE_RULES)
    check_config(cfg)  # the data groups, eval.*, the trainer
    require_model_file(cfg.ckpt, onnx_ok=True)


NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"  # an operating point's name: part of a file name too


def check_recalibrate(cfg: DictConfig) -> None:
    """evaluate.py's checks, and a ``name=`` fit for a file name."""
    usage = "python recalibrate.py ckpt=<best.ckpt|model.onnx> data.root=<a site's labelled images> name=<site>"
    _required(cfg, "name", usage)
    if not re.fullmatch(NAME, str(cfg.name)):
        raise CrackLightningError(f"name={cfg.name}: use letters, digits, '_', '-' or '.' (it names the operating "
                                  f"point and the new model file), e.g. name=site_b.")
    check_evaluate(cfg, usage)


SERVE_RULES = {
    "operating_point": POINT_RULE,
    "host": ("a host name or address, e.g. 127.0.0.1", lambda v: isinstance(v, str) and bool(v.strip()), False),
    "port": ("a port, 1 to 65535", lambda v: is_count(v) and 1 <= v <= 65535, False),
    "api_key": ("a string, or null: no key", lambda v: isinstance(v, str) and bool(v), True),
    "device": ("cpu, cuda or cuda:N", lambda v: isinstance(v, str) and bool(re.fullmatch(r"cpu|cuda(:\d+)?", v)), False),
    "max_batch_size": ("a whole number >= 1", lambda v: is_count(v) and v >= 1, False),
    "batch_timeout": ("seconds >= 0", lambda v: is_number(v) and v >= 0, False),
    "workers": ("a whole number >= 1", lambda v: is_count(v) and v >= 1, False),
    "timeout": ("seconds > 0", lambda v: is_number(v) and v > 0, False),
    "max_upload_mb": ("a whole number of MB >= 1", lambda v: is_count(v) and v >= 1, False),
    "max_pixels": ("a whole number >= 1", lambda v: is_count(v) and v >= 1, False),
    "tile_size": PREDICT_RULES["tile_size"],  # predict.py tile=true's windows, the same rules
    "tile_stride": PREDICT_RULES["tile_stride"],
    "tile_batch_size": PREDICT_RULES["batch_size"],
    "tile_mode": PREDICT_RULES["tile_mode"],
    "tile_block_megapixels": PREDICT_RULES["tile_block_megapixels"],
}


def check_serve(cfg: DictConfig) -> None:
    """Refuse a missing or impossible serve.py setting, or a ckpt= that is no model file."""
    _check_model_command(cfg, SERVE_RULES, "python serve.py ckpt=<best.ckpt|model.onnx> host=127.0.0.1 port=8000")


def check_device(device: str) -> None:
    """``cuda`` / ``cuda:N`` only where PyTorch sees that GPU (the one check that imports torch)."""
    if not device.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise CrackLightningError(f"device={device}: PyTorch sees no CUDA GPU here (torch.cuda.is_available() is "
                                  f"False). Use device=cpu, or device=auto (a GPU when there is one).")
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        raise CrackLightningError(f"device={device}: PyTorch sees {count} GPU(s) here, cuda:0 to cuda:{count - 1}. "
                                  f"Use one of them, or device=auto.")


def export_output(cfg: DictConfig) -> Path:
    """The file export.py writes: ``output=``, or beside the checkpoint ``<ckpt stem>.onnx``
    (``format=onnx-int8``: ``<ckpt stem>-int8.onnx``)."""
    ckpt = Path(cfg.ckpt).expanduser()
    if cfg.get("output"):
        return Path(cfg.output).expanduser()
    return ckpt.with_name(f"{ckpt.stem}{'-int8' if cfg.format == 'onnx-int8' else ''}.onnx")


def check_export(cfg: DictConfig) -> Path:
    """Refuse a missing or impossible export.py setting, a ckpt= that is no PyTorch checkpoint, or
    an output -- or its dense sibling ``<stem>.dense.onnx`` -- that exists (unless overwrite=true);
    return the output file."""
    if cfg.format not in FORMATS:
        raise CrackLightningError(f"format={cfg.format}: not supported; choose format={' or '.join(FORMATS)}.")
    _required(cfg, "ckpt", "python export.py ckpt=<run>/checkpoints/best.ckpt format=onnx.")
    check_types(cfg, EXPORT_RULES)
    output = export_output(cfg)
    if output.suffix.lower() != ".onnx":
        raise CrackLightningError(f"output={output}: name it *.onnx (predict.py picks onnxruntime by that suffix).")
    require_model_file(cfg.ckpt, onnx_ok=False)
    default = "<ckpt stem>-int8.onnx" if cfg.format == "onnx-int8" else "<ckpt stem>.onnx"
    key = f"output={output}" if cfg.get("output") else f"{output} (output=null: {default} beside the checkpoint)"
    if output.is_dir():
        raise CrackLightningError(f"{key} is a folder: give the file to write, e.g. output={output / 'model.onnx'}.")
    siblings = [(dense, f"{dense}, a dense graph written beside {output.name},") for dense in dense_paths(output)]
    for path, what in ((output, key), *siblings):
        if path.is_dir() or (path.exists() and not cfg.get("overwrite")):
            state = "is a folder" if path.is_dir() else f"exists ({_describe(path, Path(cfg.ckpt).expanduser())})"
            raise CrackLightningError(f"{what} {state}: export.py does not replace a file unasked. Choose another "
                                      f"output=, or add overwrite=true.")
    return output


def _describe(output: Path, ckpt: Path) -> str:
    """What an existing output file is: an export of this checkpoint, of another one, or else."""
    kind, what = sniff(output)
    meta = onnx_metadata(output) if kind == ONNX else None
    origin = export_origin(meta)
    if not origin:
        return "an ONNX model export.py did not write" if meta is not None else what
    which = "this very checkpoint" if meta["checkpoint_sha256"] == sha256_file(ckpt) else "another checkpoint"
    return f"export.py's {meta.get('format', 'onnx')} export of {which}: {origin}"


APP_RULES = {
    "operating_point": POINT_RULE,
    "host": SERVE_RULES["host"],
    "port": SERVE_RULES["port"],
    "device": PREDICT_RULES["device"],
    "batch_size": PREDICT_RULES["batch_size"],
    "max_files": ("a whole number >= 1", lambda v: is_count(v) and v >= 1, False),
    "max_upload_mb": SERVE_RULES["max_upload_mb"],
    "max_pixels": SERVE_RULES["max_pixels"],
    **{key: PREDICT_RULES[key] for key in PREDICT_RULES if key.startswith(("tile_", "heatmap."))},
}


def check_app(cfg: DictConfig) -> None:
    """Refuse a missing or impossible app.py setting, or a ckpt= that is no model file."""
    _check_model_command(cfg, APP_RULES, "python app.py ckpt=<best.ckpt|model.onnx>")
