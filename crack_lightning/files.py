"""File helpers shared by the caches, downloads and checkpoints: atomic writes, keys of file lists, digests."""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary sibling of ``path``; it becomes ``path`` only if the block completes.

    A killed or failing writer leaves no file that looks complete (the temporary one
    is removed on errors; one per process, so concurrent writers never collide)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def files_key(paths: list[Path], **params) -> str:
    """Key of a file list as the file system sees it (names, sizes, mtimes) plus ``params``."""
    h = hashlib.sha1(repr(sorted(params.items())).encode())
    for p in paths:
        st = Path(p).stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
