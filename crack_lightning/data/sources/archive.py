"""Extract an archive (RAR4, zip, tar) safely and all-or-nothing.

    extract(Path("Concrete Crack Images for Classification.rar"), Path("data/.unpacked"))

The dataset is one RAR4 archive, which Python's standard library cannot read. Backends,
in order, the first one that can read the format wins:

1. libarchive-c, in-process (the ``libarchive-c`` wheel over the system's
   ``libarchive13``): reads RAR4/RAR5, zip, tar, 7z; entries are written by this module;
2. command-line tools found on PATH: ``bsdtar`` (Debian ``libarchive-tools``), ``unrar``,
   ``7z``/``7zz``/``7za`` (Debian ``7zip``);
3. zip and tar(.gz/.bz2/.xz) also through Python's zipfile/tarfile (a mirror may
   repackage the images).

Safety: entries with absolute paths or ``..``, and links that point outside the
destination, are refused (the whole extraction fails, nothing lands at ``dest``). The
archive is extracted into a temporary folder next to ``dest`` and renamed to ``dest``
only once complete, so a killed extraction never leaves half a dataset at ``dest``.

That folder is a :func:`crack_lightning.utils.files.temporary_folder` (as is ``make data``'s
staging area): a unique name and a marker inside naming this host and process, so a
leftover is deleted only when it is ours and its process is dead, never a folder of the
user's that happens to have a similar name.
"""
from __future__ import annotations

import logging
import os
import posixpath
import re
import shutil
import stat
import subprocess
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from crack_lightning import CrackLightningError
from crack_lightning.utils.files import temporary_folder

log = logging.getLogger(__name__)

BLOCK = 1 << 20
PARTIAL = ".partial-"   # infix of the temporary extraction folders: .<dest name>.partial-XXXX

NO_EXTRACTOR = (
    "Cannot extract {archive}: it is a RAR archive and nothing here reads RAR. Install one "
    "of the Debian packages libarchive13 (read in-process by the libarchive-c Python "
    "package), libarchive-tools (bsdtar), unrar (non-free) or 7zip, e.g. "
    "`sudo apt install libarchive13 libarchive-tools`, then rerun (the archive is kept, "
    "nothing is downloaded again)"
)


# --------------------------------------------------------------------------- public

def extract(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` into the folder ``dest`` (absent or empty) and return ``dest``."""
    archive, dest = Path(archive), Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise CrackLightningError(
            f"Cannot extract into {dest}: it exists and is not an empty folder; "
            f"move it away or extract elsewhere")

    kind = sniff(archive)
    backends = [b for b in BACKENDS if kind in b.formats or (kind == "unknown" and b.generic)]
    available = [(b, handle) for b in backends if (handle := b.available()) is not None]
    if not available:
        if kind == "rar":
            raise CrackLightningError(NO_EXTRACTOR.format(archive=archive))
        raise CrackLightningError(
            f"Cannot extract {archive}: it is not a RAR, zip or tar archive (an HTML error "
            f"page instead of the file?): check source.url")

    failures = []
    for backend, handle in available:
        # the files go one level down, so the marker never lands in dest
        with temporary_folder(dest.parent, f".{dest.name}{PARTIAL}") as tmp:
            out = tmp / "content"
            out.mkdir()
            try:
                log.info("Extracting %s with %s", archive.name, backend.name)
                backend.extract(handle, archive, out)
                _check_links(out)
                os.replace(out, dest)  # atomic: dest appears complete or not at all
                return dest
            except CrackLightningError:
                raise  # unsafe entry: another backend would not make the archive safe
            except Exception as err:  # noqa: BLE001 - try the next backend, report them all
                failures.append(f"{backend.name}: {err}")
                log.warning("%s could not extract %s: %s", backend.name, archive.name, err)
    hint = (" It does not look like an archive (an HTML error page instead of the file?): "
            "check source.url." if kind == "unknown" else
            " The archive may be damaged: delete it and rerun to download it again.")
    raise CrackLightningError(f"Cannot extract {archive}: {'; '.join(failures)}.{hint}")


def sniff(archive: Path) -> str:
    """'rar', 'zip', 'tar' or 'unknown', from the first bytes (not the file name)."""
    with open(archive, "rb") as f:
        head = f.read(8)
    if head.startswith(b"Rar!\x1a\x07"):
        return "rar"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    try:
        if tarfile.is_tarfile(archive):
            return "tar"
    except OSError:
        pass
    return "unknown"


# --------------------------------------------------------------------------- entry safety

def safe_member(name: str) -> PurePosixPath | None:
    """The relative path an archive member may be written to (None for the root itself).

    Raises CrackLightningError for absolute paths and ``..`` components.
    """
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise CrackLightningError(f"Refusing to extract {name!r}: absolute path in the archive")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise CrackLightningError(f"Refusing to extract {name!r}: '..' in an archive path")
    return PurePosixPath(*parts) if parts else None


def _inside(root: Path, path: Path) -> bool:
    root_real = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real + os.sep)


def _check_symlink_target(rel: PurePosixPath, target: str) -> None:
    norm = target.replace("\\", "/")
    resolved = posixpath.normpath(posixpath.join(str(rel.parent), norm))
    if norm.startswith("/") or resolved == ".." or resolved.startswith("../"):
        raise CrackLightningError(
            f"Refusing to extract link {str(rel)!r} -> {target!r}: it points outside the dataset")


def _check_links(root: Path) -> None:
    """After extraction: no symlink may resolve outside ``root`` (CLI backends)."""
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder) / name
            if p.is_symlink() and not _inside(root, p):
                raise CrackLightningError(
                    f"Refusing the archive: link {p.relative_to(root)} -> {os.readlink(p)} "
                    f"points outside the dataset")


@dataclass
class _Entry:
    name: str
    kind: str                 # "dir", "file", "symlink", "hardlink", "other"
    linkpath: str | None = None
    blocks: Callable[[], Iterator[bytes]] | None = None
    mode: int | None = None


def _write_entries(entries: Iterator[_Entry], root: Path) -> int:
    """Write entries under ``root``, refusing anything that would land outside it."""
    count = 0
    safe_dirs: set[Path] = set()  # folders already resolved inside root (40,000 files, ~3 folders)
    for entry in entries:
        rel = safe_member(entry.name)
        if rel is None:
            continue
        target = root.joinpath(*rel.parts)
        folder = target if entry.kind == "dir" else target.parent
        if folder not in safe_dirs:
            if not _inside(root, folder):  # checked before and after: mkdir may meet a link
                raise CrackLightningError(f"Refusing to extract {entry.name!r}: it goes through a link")
            folder.mkdir(parents=True, exist_ok=True)
            if not _inside(root, folder):
                raise CrackLightningError(f"Refusing to extract {entry.name!r}: it goes through a link")
            safe_dirs.add(folder)
        if entry.kind == "dir":
            continue
        if target.is_symlink() or target.exists():
            if target.is_dir() and not target.is_symlink():
                raise CrackLightningError(f"Archive entry {entry.name!r} is both a folder and a file")
            target.unlink()  # a later duplicate entry wins, as with tar/unrar
        if entry.kind == "symlink":
            _check_symlink_target(rel, entry.linkpath or "")
            os.symlink(entry.linkpath, target)
        elif entry.kind == "hardlink":
            source = safe_member(entry.linkpath or "")
            src = root.joinpath(*source.parts) if source else root
            if source is None or not src.is_file() or not _inside(root, src):
                raise CrackLightningError(
                    f"Refusing to extract hard link {entry.name!r} -> {entry.linkpath!r}")
            shutil.copyfile(src, target)
        elif entry.kind == "file":
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(target, flags, 0o644)
            with os.fdopen(fd, "wb") as out:
                for block in entry.blocks():
                    out.write(block)
            if entry.mode is not None and entry.mode & 0o111:
                os.chmod(target, 0o755)
        else:
            log.warning("Skipping %s: not a file, folder or link", entry.name)
            continue
        count += 1
    return count


# --------------------------------------------------------------------------- backends

@dataclass
class _Backend:
    name: str
    formats: tuple[str, ...]
    generic: bool                              # worth trying on an unrecognised file
    available: Callable[[], object | None]     # a handle (module, executable) or None
    extract: Callable[[object, Path, Path], None]


def _libarchive_module():
    # libarchive-c logs at INFO on import that libarchive13 cannot modify entry digests
    logging.getLogger("libarchive").setLevel(logging.WARNING)
    try:
        import libarchive  # the system's libarchive13 through ctypes
        return libarchive
    except Exception:  # ImportError, or OSError/AttributeError when libarchive13 is missing
        return None


def _libarchive_extract(libarchive, archive: Path, root: Path) -> None:
    def entries():
        with libarchive.file_reader(str(archive)) as reader:
            for e in reader:
                if e.isdir:
                    kind = "dir"
                elif e.issym:
                    kind = "symlink"
                elif e.islnk:
                    kind = "hardlink"
                elif e.isreg:
                    kind = "file"
                else:
                    kind = "other"
                # get_blocks must be consumed before the next entry: _write_entries does
                yield _Entry(e.pathname, kind, e.linkpath if kind in ("symlink", "hardlink") else None,
                             lambda e=e: e.get_blocks(BLOCK), e.mode)
    _write_entries(entries(), root)


def _zip_extract(_module, archive: Path, root: Path) -> None:
    def entries():
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                mode = info.external_attr >> 16
                if info.is_dir():
                    yield _Entry(info.filename, "dir")
                elif stat.S_ISLNK(mode):
                    yield _Entry(info.filename, "symlink", zf.read(info).decode())
                else:
                    def blocks(info=info):
                        with zf.open(info) as f:
                            while block := f.read(BLOCK):
                                yield block
                    yield _Entry(info.filename, "file", None, blocks, mode or None)
    _write_entries(entries(), root)


def _tar_extract(_module, archive: Path, root: Path) -> None:
    def entries():
        with tarfile.open(archive) as tf:
            for m in tf:
                if m.isdir():
                    yield _Entry(m.name, "dir")
                elif m.issym():
                    yield _Entry(m.name, "symlink", m.linkname)
                elif m.islnk():
                    yield _Entry(m.name, "hardlink", m.linkname)
                elif m.isfile():
                    def blocks(m=m):
                        f = tf.extractfile(m)
                        while block := f.read(BLOCK):
                            yield block
                    yield _Entry(m.name, "file", None, blocks, m.mode)
                else:
                    yield _Entry(m.name, "other")
    _write_entries(entries(), root)


def _which(*names: str) -> Callable[[], str | None]:
    def find():
        for name in names:
            if path := shutil.which(name):
                return path
        return None
    return find


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          errors="replace")
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise RuntimeError(f"`{' '.join(cmd[:2])} ...` exited with {proc.returncode}"
                           + (f": {lines[-1]}" if lines else ""))
    return proc.stdout


def _check_names(names: list[str]) -> None:
    for name in names:
        safe_member(name)


def _bsdtar_extract(exe: str, archive: Path, root: Path) -> None:
    _check_names(_run([exe, "-tf", str(archive)]).splitlines())
    _run([exe, "-x", "--no-same-owner", "-f", str(archive), "-C", str(root)])


def _unrar_extract(exe: str, archive: Path, root: Path) -> None:
    # lb: bare names; x: extract with paths; -p-: never ask for a password; -o+: overwrite
    _check_names(_run([exe, "lb", "-p-", str(archive)]).splitlines())
    _run([exe, "x", "-p-", "-o+", "-y", "-idq", str(archive), str(root) + os.sep])


def _7z_extract(exe: str, archive: Path, root: Path) -> None:
    listing = _run([exe, "l", "-slt", str(archive)]).splitlines()
    body = listing[listing.index("----------") + 1:] if "----------" in listing else []
    _check_names([line[len("Path = "):] for line in body if line.startswith("Path = ")])
    _run([exe, "x", "-y", "-bd", f"-o{root}", str(archive)])


BACKENDS = [
    _Backend("libarchive-c", ("rar", "zip", "tar"), True, _libarchive_module, _libarchive_extract),
    _Backend("bsdtar", ("rar", "zip", "tar"), True, _which("bsdtar"), _bsdtar_extract),
    _Backend("unrar", ("rar",), False, _which("unrar"), _unrar_extract),
    _Backend("7z", ("rar", "zip", "tar"), True, _which("7z", "7zz", "7za"), _7z_extract),
    _Backend("zipfile", ("zip",), False, lambda: zipfile, _zip_extract),
    _Backend("tarfile", ("tar",), False, lambda: tarfile, _tar_extract),
]
