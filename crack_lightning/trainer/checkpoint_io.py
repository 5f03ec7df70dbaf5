"""Checkpoint files that are either complete or absent, whenever the process is killed.

Lightning's ``TorchCheckpointIO`` (2.6) serialises into memory and writes through an
fsspec transaction: for local paths that is a ``tempfile.mkstemp()`` file in the system
temp folder, then ``shutil.move`` onto the target. Where the temp folder is on another
file system than the run (a tmpfs /tmp, a container volume) the move is a copy, so a
SIGKILL during it leaves a truncated ``last.ckpt``; nothing is fsynced, so a power cut
can leave an empty one; a killed writer leaves its temp file behind in /tmp; and the whole
checkpoint is held in memory twice. Here the checkpoint goes straight into a temporary
sibling (same directory, so the rename is atomic), is fsynced, and replaces the target.

Private name of Lightning 2.6.6 used here: ``lightning.fabric.utilities.cloud_io._is_local_file_protocol``,
the test Lightning's own save uses to tell a local path from an fsspec URL (``s3://`` ...), so
both agree on which paths take the atomic route.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

from crack_lightning.utils.files import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are temp file + fsync + ``os.replace``.

    Remote paths (``s3://`` ...) keep Lightning's own transaction-based save."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
        fsync_dir(path.parent)  # the rename itself survives a power cut


def fsync_dir(folder: Path) -> None:
    """Flush a directory entry (a rename) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
