"""``app.py``: build the page and serve it on this machine."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig

log = logging.getLogger(__name__)


def offline_gradio(upload_dir: Path) -> None:
    """Before gradio is imported: no analytics or version checks (nothing leaves the machine), and
    uploads kept in the run folder, not in the system's temporary folder."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["GRADIO_TEMP_DIR"] = str(upload_dir)
    upload_dir.mkdir(parents=True, exist_ok=True)


def build(cfg: DictConfig, backend=None):
    """(inspector, page) of ``cfg`` (conf/app.yaml)."""
    offline_gradio(Path(cfg.output_dir) / "uploads")
    from crack_lightning.app.inspector import Inspector
    from crack_lightning.app.page import build_page

    inspector = Inspector(cfg, backend)
    return inspector, build_page(inspector)


def options(cfg: DictConfig) -> dict:
    """``Blocks.launch`` settings of ``cfg``: this machine's address, no share link, no browser opened, and
    files served only from the run folder. (Gradio's own theme's fonts are bundled: the page asks this
    server alone for everything, which the browser test checks.)"""
    return dict(server_name=str(cfg.host), server_port=int(cfg.port), share=False, inbrowser=False, ssr_mode=False,
                max_file_size=f"{int(cfg.max_upload_mb)}mb", allowed_paths=[str(Path(cfg.output_dir).resolve())],
                footer_links=["api"], quiet=True, show_error=True)


def launch(cfg: DictConfig) -> None:
    inspector, page = build(cfg)
    log.info("Model %s (%s), threshold %.4g; corrections go to %s", inspector.backend.path,
             inspector.backend.model_hash, inspector.card.threshold, inspector.flag_dir)
    log.info("Open http://%s:%d in a browser (Ctrl+C stops)", cfg.host, cfg.port)
    page.queue(default_concurrency_limit=1).launch(**options(cfg))
