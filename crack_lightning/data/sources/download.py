"""Download one file over HTTP(S): resumable, verified, with progress.

    fetch(url, dest, size=241363336, sha256="08d7...")

* The bytes go to ``<dest>.part``; an interrupted transfer keeps it and the next call
  resumes with an HTTP ``Range`` request (``206``; a ``200`` that ignores the range
  restarts from zero, a ``416`` means the part is already whole).
* SHA-256 is computed while downloading (the kept part is hashed first on resume); size
  and checksum are checked before the file is renamed, atomically, to ``dest``. A
  ``dest`` that already matches is not downloaded again.
* A wrong checksum deletes nothing: the bytes are kept under a name that says so
  (``<dest>.sha256-<first 12 hex>.bad``) and the error says what to do.
* Progress: a rich progress bar on a terminal, a log line every 10 % otherwise.

Only the standard library talks to the network (``urllib``), so a mirror is any URL.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from crack_lightning import CrackLightningError, __version__
from crack_lightning.utils.files import sha256_file

log = logging.getLogger(__name__)

CHUNK = 1 << 16           # bytes per read
LOG_EVERY = 10            # percent between progress log lines when not on a terminal
LOG_EVERY_BYTES = 50 << 20  # ... or bytes, when the total size is unknown
USER_AGENT = f"crack-lightning/{__version__} (+python-urllib)"

def _fix(kept: Path, size: int, sha256: str, existing: bool = False) -> str:
    """What to do after a size or checksum mismatch (``kept``: where the bytes are)."""
    first = ("delete or move it and rerun to download it again" if existing else
             f"rerun to download it again (delete {kept.name} when you no longer need it)")
    return (f"{first}; or fetch it from a mirror with source.url=<URL>; or, only if you trust "
            f"a new release of the file, pin it with source.sha256={sha256} source.size={size}")


class _Interrupted(Exception):
    """The transfer stopped early (network error); the .part file is kept."""


def fetch(url: str, dest: Path, size: int | None, sha256: str | None, progress: bool = True,
          *, timeout: float = 60.0, retries: int = 0) -> Path:
    """Download ``url`` to ``dest`` unless ``dest`` already has the expected size and SHA-256.

    ``size`` (bytes) and ``sha256`` (hex) are checked when given. ``timeout`` is the socket
    timeout in seconds (connecting, and each read); ``retries`` is how many times an
    interrupted transfer is resumed before giving up. Raises CrackLightningError for
    anything the user can fix: network errors (the partial file is kept; rerunning
    resumes), HTTP errors, a size or checksum mismatch.
    """
    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    sha256 = sha256_setting(sha256)
    size = int(size) if size is not None else None

    if dest.exists():
        if _verify_existing(dest, size, sha256):
            return dest

    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        try:
            digest = _download(url, part, size, progress=progress, timeout=timeout)
            break
        except _Interrupted as err:
            attempt += 1
            have = part.stat().st_size if part.exists() else 0
            if attempt > retries:
                raise CrackLightningError(
                    f"Download of {url} interrupted ({err}) after {_mb(have)}; the partial file "
                    f"{part} is kept: rerun the command to resume from there (a slow link may "
                    f"need a longer timeout_s=, a dead one a mirror: source.url=<URL>)") from None
            wait = min(2 ** attempt, 30)
            log.warning("Download interrupted (%s) after %s; resuming in %d s (retry %d of %d)",
                        err, _mb(have), wait, attempt, retries)
            time.sleep(wait)

    _check_and_publish(part, dest, size, sha256, url, digest)
    return dest


# --------------------------------------------------------------------------- checks

def sha256_setting(value) -> str | None:
    """``source.sha256`` as lower-case hex, or None (no check); one line if it is not one."""
    sha256 = str(value).strip().lower() if value else None  # Hydra may hand over a number
    if sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise CrackLightningError(
            f"source.sha256={sha256!r} is not a SHA-256 (64 hex digits): fix it or set source.sha256=null")
    return sha256


def _verify_existing(dest: Path, size: int | None, sha256: str | None) -> bool:
    """True if ``dest`` is already the expected file; an unexpected one is kept and reported."""
    have = dest.stat().st_size
    if size is not None and have != size:
        raise CrackLightningError(
            f"{dest} already exists but has {have:,} bytes, expected {size:,} (source.size): "
            f"it is not the expected archive and was left as it is: "
            f"{_fix(dest, have, sha256_file(dest), existing=True)}")
    if sha256 is None:
        log.warning("%s exists; no source.sha256 to check it against, using it as it is", dest)
        return True
    log.info("%s exists; checking its SHA-256", dest)
    actual = sha256_file(dest)
    if actual != sha256:
        raise CrackLightningError(
            f"{dest} already exists but its SHA-256 is {actual}, expected {sha256} "
            f"(source.sha256): it was left as it is: {_fix(dest, have, actual, existing=True)}")
    log.info("%s: size and SHA-256 match, not downloading again", dest.name)
    return True


def _check_and_publish(part: Path, dest: Path, size: int | None, sha256: str | None, url: str,
                       digest: str | None) -> None:
    """Move a complete ``part`` to ``dest`` if size and SHA-256 match; else keep it as .bad."""
    have = part.stat().st_size
    actual = digest or sha256_file(part)
    if size is not None and have != size:
        bad = _keep_bad(part, dest, actual)
        raise CrackLightningError(
            f"{url} gave {have:,} bytes, expected {size:,} (source.size); the bytes are kept "
            f"in {bad} (nothing was deleted): {_fix(bad, have, actual)}")
    if sha256 is not None and actual != sha256:
        bad = _keep_bad(part, dest, actual)
        raise CrackLightningError(
            f"SHA-256 mismatch for {url}: expected {sha256}, got {actual}; the downloaded "
            f"file is kept as {bad} (nothing was deleted): {_fix(bad, have, actual)}")
    if sha256 is None:
        log.warning("No source.sha256 to check %s against; its SHA-256 is %s (pin it with "
                    "source.sha256=%s)", dest.name, actual, actual)
    os.replace(part, dest)
    log.info("Saved %s (%s, SHA-256 %s%s)", dest, _mb(have), actual,
             ", verified" if sha256 else ", not verified")


def _keep_bad(part: Path, dest: Path, actual: str) -> Path:
    """Rename a failed download out of the way (never delete it) and return its new path."""
    bad = dest.with_name(f"{dest.name}.sha256-{actual[:12]}.bad")
    os.replace(part, bad)  # same content => same name, so this never loses distinct bytes
    return bad


# --------------------------------------------------------------------------- transfer

def _download(url: str, part: Path, size: int | None, *, progress: bool, timeout: float) -> str | None:
    """Bring ``part`` to the full length of ``url``, resuming from its current length.

    Returns the SHA-256 of the whole part (None where nothing was transferred, so the
    caller hashes the file). Raises _Interrupted when the transfer stops early.
    """
    start = part.stat().st_size if part.exists() else 0
    if size is not None and start > size:
        log.warning("%s is longer (%s) than the expected %s: starting over", part, _mb(start), _mb(size))
        start = 0
        part.write_bytes(b"")
    if size is not None and start == size:
        log.info("%s already holds all %s; verifying", part.name, _mb(size))
        return None

    hasher = hashlib.sha256()
    if start:
        with open(part, "rb") as f:  # the kept bytes count towards the checksum
            while block := f.read(1 << 20):
                hasher.update(block)

    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:
            total = _content_range_total(err.headers.get("Content-Range"))
            if total is None or total == start:
                log.info("Server says %s is already complete (HTTP 416); verifying", part.name)
                return hasher.hexdigest()
            log.warning("Server reports %s bytes but %s holds %s: starting over", total, part, start)
            part.write_bytes(b"")
            return _download(url, part, size, progress=progress, timeout=timeout)
        kept = f" (the partial file {part} is kept)" if start else ""
        raise CrackLightningError(
            f"HTTP {err.code} {err.reason} from {url}{kept}: check source.url (or name a "
            f"mirror with source.url=<URL>)") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        if start:
            raise _Interrupted(f"cannot reconnect: {reason}") from None
        raise CrackLightningError(
            f"Cannot download {url}: {reason}. Check the network (a proxy goes in https_proxy=), "
            f"the URL (source.url=<URL>), or raise timeout_s=") from None

    with response:
        status = response.status
        if status == 206:
            first, total = _content_range(response.headers.get("Content-Range"))
            if first != start:
                log.warning("Server resumed at byte %s, not %s: starting over", first, start)
                response.close()
                part.write_bytes(b"")
                return _download(url, part, size, progress=progress, timeout=timeout)
            mode = "ab"
        else:
            if start:
                log.info("Server ignored the Range request (HTTP %s): restarting from zero", status)
                start = 0
                hasher = hashlib.sha256()
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        if size is not None and total is not None and total != size:
            kept = f"the partial file {part} is kept" if start else "nothing was downloaded"
            raise CrackLightningError(
                f"{url} offers {total:,} bytes, expected {size:,} (source.size): a wrong URL "
                f"(an error page?) or a new release of the file; {kept}. Check source.url or "
                f"name a mirror with source.url=<URL>; only if you trust a new release, set "
                f"source.size={total} and its source.sha256=<hex>")
        total = total if total is not None else size

        done = start
        name = part.name.removesuffix(".part")
        log.info("Downloading %s (%s%s) from %s", name, _mb(total),
                 f", resuming at {_mb(start)}" if start else "", url)
        try:
            with open(part, mode) as out, _Progress(name, total, start, progress) as bar:
                while True:
                    try:
                        block = response.read(CHUNK)
                    except (OSError, http.client.HTTPException) as err:  # reset, timeout, short read
                        raise _Interrupted(_reason(err)) from None
                    if not block:
                        break
                    out.write(block)
                    hasher.update(block)
                    done += len(block)
                    bar.update(done)
                out.flush()
                os.fsync(out.fileno())
        except OSError as err:  # the disk, not the network
            raise CrackLightningError(
                f"Cannot write {part}: {err.strerror or err}; free some space (the file is "
                f"{_mb(total)}) or download elsewhere with download_dir=<folder>") from None
        if total is not None and done < total:
            raise _Interrupted(f"connection closed at {done:,} of {total:,} bytes")
    return hasher.hexdigest()


def _reason(err: BaseException) -> str:
    if isinstance(err, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(err, http.client.IncompleteRead):
        return "connection closed early"
    return f"{type(err).__name__}: {err}"


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-199/1000`` -> (100, 1000); total None for ``*``."""
    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    return int(m.group(1)), (None if m.group(3) == "*" else int(m.group(3)))


def _content_range_total(value: str | None) -> int | None:
    m = re.fullmatch(r"\s*bytes\s+\*/(\d+)\s*", value or "")
    return int(m.group(1)) if m else None


def _mb(n: int | None) -> str:
    """1234567 -> '1.2 MB' (decimal units, as rich's DownloadColumn)."""
    if n is None:
        return "an unknown size"
    if n < 1000:
        return f"{n:,} bytes"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:,.1f} {unit}"
    raise AssertionError


class _Progress:
    """A rich progress bar on a terminal; log lines every LOG_EVERY % otherwise."""

    def __init__(self, name: str, total: int | None, start: int, enabled: bool):
        self.name, self.total, self.enabled = name, total, enabled
        self.t0, self.start = time.monotonic(), start
        self.rich = None
        self.next_log = start
        if enabled:
            from rich.console import Console
            console = Console(stderr=True)
            if console.is_terminal:
                from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                           TimeRemainingColumn, TransferSpeedColumn)
                self.rich = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                     DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                                     console=console, transient=False)
                self.task = self.rich.add_task(name, total=total, completed=start)
        self._advance_log()

    def _advance_log(self) -> None:
        step = self.total * LOG_EVERY // 100 if self.total else LOG_EVERY_BYTES
        step = max(step, 1)
        self.next_log = (self.next_log // step + 1) * step

    def __enter__(self):
        if self.rich is not None:
            self.rich.start()
        return self

    def update(self, done: int) -> None:
        if self.rich is not None:
            self.rich.update(self.task, completed=done)
        elif self.enabled and (done >= self.next_log or (self.total and done >= self.total)):
            elapsed = max(time.monotonic() - self.t0, 1e-6)
            speed = (done - self.start) / elapsed
            pct = f"{100 * done / self.total:3.0f} % " if self.total else ""
            log.info("Downloading %s: %s(%s of %s, %s/s)", self.name, pct, _mb(done),
                     _mb(self.total), _mb(int(speed)))
            while done >= self.next_log:
                self._advance_log()

    def __exit__(self, *exc):
        if self.rich is not None:
            self.rich.stop()
        return False

