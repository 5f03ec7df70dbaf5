"""File helpers shared by the caches, downloads and checkpoints: atomic writes, keys of file lists, digests,
and the rules every writer follows (never inside the data it reads; a leftover is removed only when it is ours)."""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

# Temporary names carry the writer's host and process, so a leftover is removed only when it is
# ours (this host) and its writer is dead -- never a concurrent writer's file, nor one of another
# machine sharing the folder.
HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"
TEMP_MARKER = ".crack_lightning_temporary.json"  # in every temporary folder we make: who made it
_PARTIAL = re.compile(r"\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.partial")


def _owner_tag() -> str:
    return f"{HOST}-{os.getpid()}"


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary sibling of ``path``; it becomes ``path`` only if the block completes.

    A killed or failing writer leaves no file that looks complete (the temporary one is removed
    on errors; one per process, so concurrent writers never collide; a killed writer's is
    cleaned by :func:`remove_stale_partials`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{_owner_tag()}.partial{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_path`: a reader never sees half a file."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data) if isinstance(data, bytes) else tmp.write_text(data)
    return Path(path)


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_partials(folder: Path, pattern: str = "*") -> list[Path]:
    """Delete the temporary files :func:`atomic_path` left in ``folder`` (those of ``pattern``)
    when their writer, a process of this host, is dead -- what a SIGKILL mid-write leaves. Only
    call it on folders we own (caches, run folders). Returns what was removed."""
    removed = []
    for tmp in Path(folder).glob(f".{pattern}.partial*"):
        match = _PARTIAL.search(tmp.name)
        if match and match["host"] == HOST and not is_alive(int(match["pid"])) and tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@contextmanager
def temporary_folder(parent: Path, prefix: str) -> Iterator[Path]:
    """A new private folder ``parent/<prefix><random>`` with our marker inside; removed, with
    whatever is still in it, when the block ends. Stale ones (:func:`remove_stale_folders`) go
    first. Make sub-folders in it for what will move out: they get the usual permissions."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_folders(parent, prefix)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        write_atomic(tmp / TEMP_MARKER, json.dumps({"tool": "crack-lightning", "host": HOST, "pid": os.getpid()}))
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_folders(parent: Path, prefix: str) -> list[Path]:
    """Delete the :func:`temporary_folder` leftovers in ``parent`` named ``prefix*`` whose marker
    names this host and a dead process (a killed run). A folder without our marker, or of a
    live process or another host, is never touched. Returns what was removed."""
    removed = []
    for folder in Path(parent).glob(f"{glob.escape(prefix)}*"):
        owner = _marker(folder)
        if owner and owner["host"] == HOST and not is_alive(owner["pid"]):
            log.info("Removing %s, left by an interrupted run (process %d)", folder, owner["pid"])
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _marker(folder: Path) -> dict | None:
    """The marker of a real folder (no link) that :func:`temporary_folder` made, else None."""
    marker = folder / TEMP_MARKER
    if folder.is_symlink() or not folder.is_dir() or marker.is_symlink() or not marker.is_file():
        return None
    try:
        owner = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    ok = (isinstance(owner, dict) and owner.get("tool") == "crack-lightning"
          and isinstance(owner.get("host"), str) and type(owner.get("pid")) is int)
    return owner if ok else None


def is_within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (both resolved: links followed)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


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
