"""`make data` end to end against a local HTTP server on 127.0.0.1 (never the network).

The server serves a small RAR4 archive (written by tests/rar4.py) shaped like the real
one: Positive/ and Negative/ with a few tiny JPEGs. It honours Range requests and can
drop the connection after N bytes of the next response, or ignore Range.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from crack_lightning import CrackLightningError
from crack_lightning.data.sources import download
from crack_lightning.data.sources.archive import extract, safe_member
from crack_lightning.data.sources.download import fetch
from crack_lightning.data.sources.install import LAYOUT_MARKER, get_data
from tests.conftest import CONF, REPO
from tests.rar4 import write_rar4

CLASSES = ("Positive", "Negative")


# --------------------------------------------------------------------------- fixtures

def jpeg_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _entries(prefix: str = "", per_class: dict | None = None) -> dict[str, bytes | None]:
    """{"Positive": None, "Positive/00001.jpg": b"...", ...}, as the real archive has."""
    per_class = per_class or {"Positive": 3, "Negative": 2}
    entries: dict[str, bytes | None] = {}
    for c, (cls, n) in enumerate(per_class.items()):
        entries[f"{prefix}{cls}"] = None
        for i in range(n):
            entries[f"{prefix}{cls}/{i + 1:05d}.jpg"] = jpeg_bytes(100 * c + i)
    return entries


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """urllib honours *_proxy variables: keep every request (and the subprocess's) on 127.0.0.1."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def rar_bytes(tmp_path_factory) -> bytes:
    return write_rar4(tmp_path_factory.mktemp("rar") / "d.rar", _entries()).read_bytes()


class _Server:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[dict] = []
        self.drop_after: int | None = None  # drop the next response after this many bytes
        self.ignore_range = False
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.state = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802
        state = self.server.state
        state.requests.append({"path": self.path, "range": self.headers.get("Range")})
        data = state.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        start, status = 0, 200
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and not state.ignore_range:
            start, status = int(m.group(1)), 206
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        drop, state.drop_after = state.drop_after, None
        if drop is None:
            self.wfile.write(body)
            return
        self.wfile.write(body[:drop])  # then hang up mid-transfer
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = _Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def get_data_overrides(tmp_path: Path, url: str, data: bytes, *extra: str) -> list[str]:
    return [f"paths.data_dir={tmp_path / 'data'}", f"source.url={url}", f"source.size={len(data)}",
            f"source.sha256={_sha(data)}", "retries=0", "timeout_s=10", *extra]


def _cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="get_data", overrides=overrides)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def small_chunks(monkeypatch):
    """Read 512 bytes at a time, so a tiny archive shows several progress lines."""
    monkeypatch.setattr(download, "CHUNK", 512)


@pytest.fixture
def write_card_stub(monkeypatch):
    """Record write_card calls when crack_lightning.data.quality.card is not there (yet)."""
    try:
        import crack_lightning.data.quality.card  # noqa: F401
        yield None
    except ImportError:
        import types
        calls = []
        module = types.ModuleType("crack_lightning.data.quality.card")
        module.write_card = lambda root: calls.append(root)
        monkeypatch.setitem(sys.modules, "crack_lightning.data.quality.card", module)
        yield calls


# --------------------------------------------------------------------------- the RAR4 writer

def test_rar4_writer_is_read_by_libarchive(tmp_path):
    import libarchive

    entries = {"Positive": None, "Positive/00001.jpg": jpeg_bytes(0), "Negative/00001.jpg": b"x" * 70000}
    for host in ("win32", "unix"):
        path = write_rar4(tmp_path / f"{host}.rar", entries, host_os=host)
        assert path.read_bytes().startswith(b"Rar!\x1a\x07\x00")
        with libarchive.file_reader(str(path)) as archive:
            got = {e.pathname: (None if e.isdir else b"".join(e.get_blocks())) for e in archive}
            assert archive.format_name.startswith(b"RAR")
        assert got == entries


# --------------------------------------------------------------------------- end to end

def test_get_data_end_to_end_then_idempotent(tmp_path, server, rar_bytes, small_chunks, caplog,
                                             write_card_stub):
    """Download with progress, checksum pass, extract, layout at root, card; then no-ops."""
    server.files["dataset.rar"] = rar_bytes
    cfg = _cfg(get_data_overrides(tmp_path, server.url("dataset.rar"), rar_bytes))
    with caplog.at_level(logging.INFO):
        root = get_data(cfg)

    data = tmp_path / "data"
    assert root == data / "concrete_crack"
    want = {k: v for k, v in _entries().items() if v is not None}
    got = _files(root)
    assert {k: v for k, v in got.items() if "/" in k} == want
    archive = data / "downloads" / "Concrete Crack Images for Classification.rar"
    assert archive.read_bytes() == rar_bytes                       # kept, verified
    assert not list(data.glob(".*")) and not list(archive.parent.glob("*.part"))  # no leftovers
    assert [r["range"] for r in server.requests] == [None]
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Downloading")]
    assert len(progress) >= 5 and progress[0].startswith(
        f"Downloading Concrete Crack Images for Classification.rar ({len(rar_bytes) / 1000:.1f} kB) from http://127.0.0.1:")
    assert progress[-1].startswith("Downloading Concrete Crack Images for Classification.rar: 100 %")
    assert "verified" in caplog.text and "Dataset ready at" in caplog.text
    assert "Image counts differ from source.expect: Positive: 3 (expected 20,000)" in caplog.text
    CARD_MD = "dataset_card.md"  # noqa: N806 - crack_lightning.data.quality.card.CARD_MD
    if write_card_stub is None:  # the real card, with the source's licence and citation
        card = (root / CARD_MD).read_text()
        assert "CC BY 4.0" in card and "10.17632/5y9wdsg2zt.2" in card and "ISARC 2018" in card
    else:
        assert write_card_stub == [root]

    # rerun: nothing downloaded, nothing changed
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert get_data(cfg) == root
    assert "nothing to do" in caplog.text and len(server.requests) == 1
    assert _files(root) == got

    # force=true never deletes the dataset: it refuses and explains
    with pytest.raises(CrackLightningError, match=r"force=true.*never deletes data.*move or delete"):
        get_data(_cfg(get_data_overrides(tmp_path, server.url("dataset.rar"), rar_bytes, "force=true")))
    assert _files(root) == got

    if write_card_stub is None:  # our layout without its card (deleted, or it failed): the rerun adds it
        (root / CARD_MD).unlink()
        other = get_data_overrides(tmp_path, server.url("dataset.rar"), rar_bytes)
        other[3] = f"source.sha256={_sha(b'another release')}"
        caplog.clear()
        with caplog.at_level(logging.INFO):  # ... but only for the archive it was laid out from
            get_data(_cfg(other))
        assert "not from source mendeley: no card written" in caplog.text and not (root / CARD_MD).exists()
        get_data(cfg)
        assert (root / CARD_MD).is_file() and len(server.requests) == 1


def test_resume_after_interrupted_transfer(tmp_path, server, rar_bytes):
    server.files["dataset.rar"] = rar_bytes
    half = len(rar_bytes) // 2
    server.drop_after = half
    cfg = _cfg(get_data_overrides(tmp_path, server.url("dataset.rar"), rar_bytes, "card=false"))
    with pytest.raises(CrackLightningError, match=r"interrupted.*is kept: rerun the command to resume"):
        get_data(cfg)
    part = tmp_path / "data" / "downloads" / "Concrete Crack Images for Classification.rar.part"
    assert part.stat().st_size == half
    assert not (tmp_path / "data" / "concrete_crack").exists()

    get_data(cfg)
    assert [r["range"] for r in server.requests] == [None, f"bytes={half}-"]
    assert part.with_name(part.name[:-5]).read_bytes() == rar_bytes  # byte-identical
    assert not part.exists()
    assert len(list((tmp_path / "data" / "concrete_crack" / "Positive").iterdir())) == 3


def test_retries_resume_in_process_and_range_ignored_restarts(tmp_path, server, rar_bytes, monkeypatch):
    monkeypatch.setattr(download.time, "sleep", lambda s: None)
    server.files["a.rar"] = rar_bytes
    server.drop_after = 1000
    dest = fetch(server.url("a.rar"), tmp_path / "a.rar", len(rar_bytes), _sha(rar_bytes),
                 progress=False, timeout=10, retries=1)
    assert dest.read_bytes() == rar_bytes
    assert [r["range"] for r in server.requests] == [None, "bytes=1000-"]

    # a server that answers a Range request with the whole file (200): start over
    (tmp_path / "b.rar.part").write_bytes(b"garbage!" * 10)
    server.ignore_range = True
    dest = fetch(server.url("a.rar"), tmp_path / "b.rar", len(rar_bytes), _sha(rar_bytes), progress=False)
    assert dest.read_bytes() == rar_bytes and server.requests[-1]["range"] == "bytes=80-"

    # a .part that is already whole: the server answers 416, the file is verified and kept
    server.ignore_range = False
    (tmp_path / "c.rar.part").write_bytes(rar_bytes)
    dest = fetch(server.url("a.rar"), tmp_path / "c.rar", None, _sha(rar_bytes), progress=False)
    assert dest.read_bytes() == rar_bytes and server.requests[-1]["range"] == f"bytes={len(rar_bytes)}-"


def test_checksum_fail_subprocess_keeps_everything(tmp_path, server, rar_bytes):
    """The real `python -m crack_lightning.cli.data`: exit 2, one line, nothing deleted."""
    server.files["dataset.rar"] = rar_bytes
    data = tmp_path / "data"
    mine = {data / "downloads" / "notes.txt": b"mine", data / "other" / "x.jpg": jpeg_bytes(7)}
    for path, content in mine.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    wrong = _sha(b"another release")
    overrides = get_data_overrides(tmp_path, server.url("dataset.rar"), rar_bytes)
    overrides[3] = f"source.sha256={wrong}"
    proc = subprocess.run([sys.executable, "-m", "crack_lightning.cli.data", *overrides],
                          cwd=tmp_path, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    bad = data / "downloads" / f"Concrete Crack Images for Classification.rar.sha256-{_sha(rar_bytes)[:12]}.bad"
    error = [line for line in out.splitlines() if "SHA-256 mismatch" in line]
    assert len(error) == 1, out
    for needle in (f"expected {wrong}", f"got {_sha(rar_bytes)}", str(bad), "source.url=<URL>",
                   f"source.sha256={_sha(rar_bytes)} source.size={len(rar_bytes)}", "rerun to download it again"):
        assert needle in error[0]
    assert bad.read_bytes() == rar_bytes                       # the bytes are kept
    assert all(p.read_bytes() == c for p, c in mine.items())   # the user's files are untouched
    assert not (data / "concrete_crack").exists()
    assert "Downloading Concrete Crack Images for Classification.rar: 100 %" in out  # progress
    assert not (tmp_path / "outputs").exists() and not (tmp_path / ".hydra").exists()  # no litter
    assert (data / "downloads" / "get_data.log").is_file()


def test_existing_archive_with_wrong_checksum_is_left_alone(tmp_path, rar_bytes):
    dest = tmp_path / "a.rar"
    dest.write_bytes(b"x" * len(rar_bytes))
    with pytest.raises(CrackLightningError, match=r"already exists but its SHA-256 is .*left as it is"):
        fetch("http://127.0.0.1:9/unused", dest, len(rar_bytes), _sha(rar_bytes), progress=False)
    assert dest.read_bytes() == b"x" * len(rar_bytes)


def test_size_mismatch(tmp_path, server, rar_bytes):
    server.files["dataset.rar"] = rar_bytes
    overrides = get_data_overrides(tmp_path, server.url("dataset.rar"), rar_bytes, "card=false")
    overrides[2] = f"source.size={len(rar_bytes) + 1}"
    with pytest.raises(CrackLightningError, match=rf"offers {len(rar_bytes):,} bytes, expected "
                                                  rf"{len(rar_bytes) + 1:,} \(source.size\)"):
        get_data(_cfg(overrides))
    assert not list((tmp_path / "data" / "downloads").glob("Concrete*"))
    assert not (tmp_path / "data" / "concrete_crack").exists()


def test_http_error_and_refused_connection(tmp_path, server, rar_bytes):
    with pytest.raises(CrackLightningError, match=r"HTTP 404 .*check source.url"):
        fetch(server.url("missing.rar"), tmp_path / "a.rar", None, None, progress=False)
    port = server.httpd.server_address[1]
    server.httpd.shutdown()
    server.httpd.server_close()
    with pytest.raises(CrackLightningError, match=r"Cannot download .*source.url=<URL>"):
        fetch(f"http://127.0.0.1:{port}/x.rar", tmp_path / "a.rar", None, None, progress=False, timeout=2)


# --------------------------------------------------------------------------- extraction

def test_zip_mirror_nested_folder_without_libarchive(tmp_path, server, monkeypatch, caplog):
    """A mirror repackaged as zip, class folders one level down: Python's zipfile reads it."""
    monkeypatch.setitem(sys.modules, "libarchive", None)  # `import libarchive` fails
    buf = io.BytesIO()
    entries = _entries(prefix="Concrete Crack Images/")
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in entries.items():
            if content is not None:
                zf.writestr(name, content)
    data = buf.getvalue()
    server.files["mirror.zip"] = data
    with caplog.at_level(logging.INFO):
        root = get_data(_cfg(get_data_overrides(tmp_path, server.url("mirror.zip"), data,
                                        "source.filename=mirror.zip", "card=false")))
    assert "Extracting mirror.zip with zipfile" in caplog.text
    assert sorted(p.name for p in root.iterdir()) == [LAYOUT_MARKER, "Negative", "Positive"]
    assert (root / "Positive" / "00003.jpg").read_bytes() == entries["Concrete Crack Images/Positive/00003.jpg"]
    assert not list((tmp_path / "data").glob(".*"))


def _tar_with_symlink(path: Path, target: str) -> Path:
    with tarfile.open(path, "w") as tf:
        info = tarfile.TarInfo("Positive/link.jpg")
        info.type, info.linkname = tarfile.SYMTYPE, target
        tf.addfile(info)
    return path


@pytest.mark.parametrize("kind", ["rar-dotdot", "zip-dotdot", "tar-symlink"])
def test_path_traversal_refused(tmp_path, kind):
    work = tmp_path / "work"
    work.mkdir()
    if kind == "rar-dotdot":
        archive = write_rar4(work / "a.rar", {"Positive/00001.jpg": b"ok", "Positive/../../evil.jpg": b"evil"})
    elif kind == "zip-dotdot":
        archive = work / "a.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("Positive/00001.jpg", b"ok")
            zf.writestr("../evil.jpg", b"evil")
    else:
        archive = _tar_with_symlink(work / "a.tar", "../../../etc/passwd")
    dest = work / "out" / "unpacked"
    with pytest.raises(CrackLightningError, match="Refusing"):
        extract(archive, dest)
    assert not dest.exists() and not list(dest.parent.iterdir())  # no half extraction either
    assert not list(tmp_path.rglob("evil.jpg"))


def test_safe_member():
    assert str(safe_member("Positive\\00001.jpg")) == "Positive/00001.jpg"
    assert safe_member("./") is None
    for bad in ("/etc/passwd", "C:\\x.jpg", "a/../../b", ".."):
        with pytest.raises(CrackLightningError):
            safe_member(bad)


def test_get_data_refuses_traversal_archive(tmp_path, server):
    data = write_rar4(tmp_path / "evil.rar", {**_entries(), "../evil.jpg": b"evil"}).read_bytes()
    server.files["evil.rar"] = data
    with pytest.raises(CrackLightningError, match=r"Refusing to extract '\.\./evil\.jpg'"):
        get_data(_cfg(get_data_overrides(tmp_path, server.url("evil.rar"), data, "card=false")))
    assert not (tmp_path / "data" / "concrete_crack").exists()
    assert not list(tmp_path.rglob("evil.jpg")) and not list((tmp_path / "data").glob(".*"))


def test_no_extractor_names_the_debian_packages(tmp_path, server, rar_bytes, monkeypatch):
    monkeypatch.setitem(sys.modules, "libarchive", None)
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no bsdtar, unrar, 7z
    server.files["dataset.rar"] = rar_bytes
    with pytest.raises(CrackLightningError) as info:
        get_data(_cfg(get_data_overrides(tmp_path, server.url("dataset.rar"), rar_bytes, "card=false")))
    message = str(info.value)
    for needle in ("libarchive13", "libarchive-tools", "bsdtar", "unrar", "7zip", "sudo apt install"):
        assert needle in message
    assert "\n" not in message
    archive = tmp_path / "data" / "downloads" / "Concrete Crack Images for Classification.rar"
    assert archive.read_bytes() == rar_bytes  # verified and kept: the rerun needs no download
    assert not (tmp_path / "data" / "concrete_crack").exists()


FAKE_BSDTAR = """#!{python}
# a stand-in for bsdtar: lists with -tf, extracts with -x ... -f ARCHIVE -C DIR (via libarchive-c)
import os, sys
import libarchive
args = sys.argv[1:]
if args[0] == "-tf":
    with libarchive.file_reader(args[1]) as a:
        for e in a:
            print(e.pathname)
else:
    archive, out = args[args.index("-f") + 1], args[args.index("-C") + 1]
    os.chdir(out)
    libarchive.extract_file(archive)
"""


def test_cli_backend_when_libarchive_c_is_missing(tmp_path, monkeypatch, caplog):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "bsdtar"
    fake.write_text(FAKE_BSDTAR.format(python=sys.executable))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setitem(sys.modules, "libarchive", None)  # in this process only
    entries = _entries()
    with caplog.at_level(logging.INFO):
        out = extract(write_rar4(tmp_path / "a.rar", entries), tmp_path / "out")
    assert "Extracting a.rar with bsdtar" in caplog.text
    assert _files(out) == {k: v for k, v in entries.items() if v is not None}
    # names are checked from the listing before anything is extracted
    evil = write_rar4(tmp_path / "evil.rar", {"../evil.jpg": b"evil"})
    with pytest.raises(CrackLightningError, match="Refusing"):
        extract(evil, tmp_path / "out2")
    assert not (tmp_path / "evil.jpg").exists()


def test_root_default_matches_train_config(tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        get_cfg = compose(config_name="get_data", overrides=[f"paths.data_dir={tmp_path}"])
        train_cfg = compose(config_name="train", overrides=[f"paths.data_dir={tmp_path}"])
    assert get_cfg.root == train_cfg.data.root == f"{tmp_path}/concrete_crack"
    assert get_cfg.source.size == 241363336 and REPO.is_dir()


def test_root_with_other_files_is_refused(tmp_path, server, rar_bytes):
    root = tmp_path / "data" / "concrete_crack"
    root.mkdir(parents=True)
    (root / "mine.txt").write_text("mine")
    with pytest.raises(CrackLightningError, match=r"exists but does not hold Positive/ and Negative/.*mine.txt"):
        get_data(_cfg(get_data_overrides(tmp_path, server.url("dataset.rar"), rar_bytes)))
    assert server.requests == [] and (root / "mine.txt").read_text() == "mine"
