"""A tiny writer of RAR4 archives (RAR 1.5-4.x format) with STORED entries, for tests.

The real dataset ships as one RAR4 archive and there is no RAR writer to depend on,
so this writes the format directly (RARLAB's technote.txt, RAR 1.5-4.x):

    marker block      52 61 72 21 1A 07 00                    ("Rar!\\x1a\\x07\\x00")
    archive header    HEAD_CRC HEAD_TYPE=0x73 HEAD_FLAGS HEAD_SIZE=13 RESERVED1(2) RESERVED2(4)
    file header       HEAD_CRC HEAD_TYPE=0x74 HEAD_FLAGS HEAD_SIZE PACK_SIZE UNP_SIZE HOST_OS
                      FILE_CRC FTIME UNP_VER METHOD NAME_SIZE ATTR FILE_NAME, then the data
    end of archive    HEAD_CRC HEAD_TYPE=0x7B HEAD_FLAGS=0x4000 HEAD_SIZE=7

All integers little-endian; HEAD_CRC is the low 16 bits of the CRC32 of the header from
HEAD_TYPE on; FILE_CRC is the CRC32 of the unpacked data. Entries are stored (method
0x30, no compression), directories carry the 0x00E0 "window" bits and the DOS directory
attribute. Like WinRAR on Windows (the real archive), names use ``\\`` as the separator
and HOST_OS 2 (Win32) unless ``host_os="unix"``.
"""
from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

MARKER = b"Rar!\x1a\x07\x00"
MAIN_HEAD, FILE_HEAD, END_HEAD = 0x73, 0x74, 0x7B
LONG_BLOCK = 0x8000        # ADD_SIZE (here: PACK_SIZE) follows the header
LHD_DIRECTORY = 0x00E0     # dictionary bits 111: the entry is a directory
ENDARC_FLAGS = 0x4000      # "next volume" bit clear; bit 14 as WinRAR writes it
METHOD_STORE = 0x30
UNP_VER = 20               # version needed to extract: 2.0 suffices for stored entries
HOST_WIN32, HOST_UNIX = 2, 3
DOS_DIR, DOS_ARCHIVE = 0x10, 0x20


def _crc16(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFF


def _block(head_type: int, flags: int, body: bytes) -> bytes:
    """A block header: CRC16 over type..end of header, then the header itself."""
    rest = struct.pack("<BHH", head_type, flags, 7 + len(body)) + body
    return struct.pack("<H", _crc16(rest)) + rest


def _dos_time(t: float) -> int:
    y, mo, d, h, mi, s = time.localtime(t)[:6]
    y = max(y, 1980)
    return ((y - 1980) << 25) | (mo << 21) | (d << 16) | (h << 11) | (mi << 5) | (s // 2)


def _file_block(name: str, data: bytes | None, host_os: str, mtime: float) -> bytes:
    is_dir = data is None
    payload = b"" if is_dir else data
    if len(payload) >= 2**32:
        raise ValueError("this writer has no 64-bit sizes (HIGH_PACK_SIZE)")
    if host_os == "unix":
        host, sep = HOST_UNIX, "/"
        attr = (0o40755 if is_dir else 0o100644)
    else:
        host, sep = HOST_WIN32, "\\"
        attr = DOS_DIR if is_dir else DOS_ARCHIVE
    raw_name = name.strip("/").replace("/", sep).encode("ascii")  # the tests use ASCII names
    flags = LONG_BLOCK | (LHD_DIRECTORY if is_dir else 0)
    body = struct.pack(
        "<IIBIIBBHI",
        len(payload),              # PACK_SIZE (stored: = unpacked size)
        len(payload),              # UNP_SIZE
        host,                      # HOST_OS
        zlib.crc32(payload),       # FILE_CRC
        _dos_time(mtime),          # FTIME
        UNP_VER,                   # UNP_VER
        METHOD_STORE,              # METHOD
        len(raw_name),             # NAME_SIZE
        attr,                      # ATTR
    ) + raw_name
    return _block(FILE_HEAD, flags, body) + payload


def write_rar4(path: Path, entries: dict[str, bytes | None], host_os: str = "win32",
               mtime: float | None = None) -> Path:
    """Write a RAR4 archive: ``{"dir/": None or "dir": None, "dir/file": b"..."}``.

    ``None`` values are directory entries; other values are file contents, stored in
    the order given (names are written as given, so ``..`` or absolute names can be made
    to test extractors).
    """
    mtime = time.time() if mtime is None else mtime
    out = bytearray(MARKER)
    out += _block(MAIN_HEAD, 0, struct.pack("<HI", 0, 0))
    for name, data in entries.items():
        out += _file_block(name, data, host_os, mtime)
    out += _block(END_HEAD, ENDARC_FLAGS, b"")
    path = Path(path)
    path.write_bytes(bytes(out))
    return path


if __name__ == "__main__":  # quick check: write one and list it with libarchive-c
    import sys
    import tempfile

    import libarchive

    with tempfile.TemporaryDirectory() as tmp:
        p = write_rar4(Path(tmp) / "t.rar", {"A": None, "A/x.txt": b"hello", "B/y.txt": b"yo"})
        with libarchive.file_reader(str(p)) as archive:
            print(archive.format_name, file=sys.stderr)
            for entry in archive:
                print(entry.pathname, entry.isdir, entry.size, b"".join(entry.get_blocks()))
