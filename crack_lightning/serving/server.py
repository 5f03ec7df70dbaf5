"""``serve.py``: build and run the LitServe server of :class:`~crack_lightning.serving.api.CrackAPI`
(``/predict``) and :class:`~crack_lightning.serving.api.TileAPI` (``/predict?tile=true``)."""

from __future__ import annotations

import logging
import os

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def model_summary(ckpt: str, operating_point: str | None, tile_size, tile_stride, tile_mode: str) -> dict:
    """What ``GET /health`` says of the model: its file, hash, classes, operating point and the
    window of ``tile=true`` -- from its card alone (the model itself is built in the worker, not here too)."""
    from pathlib import Path

    from crack_lightning.inference.checkpoint import read_checkpoint
    from crack_lightning.inference.model_files import onnx_metadata
    from crack_lightning.model_card import ModelCard
    from crack_lightning.inference.photos import tile_windows
    from crack_lightning.utils.files import sha256_file

    path = Path(ckpt).expanduser()
    onnx = path.suffix.lower() == ".onnx"
    card = ModelCard.from_onnx_metadata(onnx_metadata(path) or {}, str(path)) if onnx else \
        ModelCard.from_checkpoint(read_checkpoint(path), str(path))
    if operating_point:
        card = card.with_operating_point(card.point(operating_point))
    window, stride = tile_windows(card.preprocessing.native_size, tile_size, tile_stride)
    return {"model": str(path), "model_hash": sha256_file(path)[:12], "classes": list(card.class_names),
            "crack_classes": list(card.positive_classes), "threshold": card.threshold,
            "temperature": card.temperature, "operating_point": operating_point or "stored",
            "operating_points": sorted(card.operating_points), "input_size": list(card.preprocessing.input_size),
            "tile_size": list(window), "tile_stride": list(stride), "tile_mode": tile_mode}


def build_server(cfg: DictConfig):
    """The LitServer of ``cfg`` (serve.yaml), with ``/health`` answering :func:`model_summary`."""
    if cfg.get("api_key"):  # LitServe reads its key from the environment when it is imported
        os.environ["LIT_SERVER_API_KEY"] = str(cfg.api_key)
    import litserve as ls
    from fastapi import Depends
    from starlette.responses import JSONResponse

    from crack_lightning.inference.predict import resolve_batch_size
    from crack_lightning.serving.api import CrackAPI, TileAPI, UploadGate

    model = (str(cfg.ckpt), str(cfg.device), cfg.get("operating_point"), int(cfg.max_pixels))
    tile_size, tile_stride = _plain(cfg.get("tile_size")), _plain(cfg.get("tile_stride"))
    tile_batch_size = resolve_batch_size(cfg.get("tile_batch_size", "auto"), str(cfg.device))
    tile_mode = str(cfg.tile_mode)
    apis = [CrackAPI(*model, int(cfg.max_batch_size), float(cfg.batch_timeout)),  # a model worker each: LitServe's way
            TileAPI(*model, tile_size=tile_size, tile_stride=tile_stride, mode=tile_mode, batch_size=tile_batch_size,
                    block_megapixels=float(cfg.tile_block_megapixels))]
    server = ls.LitServer(apis, accelerator="cpu" if cfg.device == "cpu" else "auto", devices=1,
                          workers_per_device=int(cfg.workers), healthcheck_path="/ready", timeout=float(cfg.timeout),
                          middlewares=[(UploadGate, {"max_bytes": int(cfg.max_upload_mb) * 2**20})])
    summary = {**model_summary(str(cfg.ckpt), cfg.get("operating_point"), tile_size, tile_stride, tile_mode),
               "tile_batch_size": tile_batch_size}

    @server.app.get("/health", dependencies=[Depends(server.setup_auth())])
    async def health():
        return JSONResponse({"status": "ok", **summary})

    return server


def _plain(value):
    """An OmegaConf list as a plain one (it travels to the worker process pickled)."""
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def serve(cfg: DictConfig) -> None:
    from crack_lightning.inference.settings import check_serve

    check_serve(cfg)
    server = build_server(cfg)
    log.info("Serving %s on http://%s:%d/predict (POST, multipart field 'file'; ?tile=true: whole photos); "
             "GET /health", cfg.ckpt, cfg.host, cfg.port)
    server.run(host=str(cfg.host), port=int(cfg.port), generate_client_file=False)
