"""What a model file is -- a PyTorch checkpoint, an ONNX model, or neither -- from its first bytes.

Nothing here imports torch: a wrong file given as ``ckpt=`` is refused in a second, saying what
the file is, and before anything unpickles it. Whether a checkpoint holds only tensors and plain
containers is torch's ``weights_only`` loader's call (:func:`~crack_lightning.inference.
checkpoint.read_checkpoint`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from crack_lightning import CrackLightningError

TORCH, ONNX, OTHER = "torch", "onnx", "other"
# torch.save's legacy (before 1.6) format: a protocol-2 pickle of this magic number first
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
# an ONNX ModelProto is written in field order: ir_version (field 1, varint: byte 0x08) first,
# then one of producer_name, producer_version, domain, model_version, doc_string, graph, opset_import
_ONNX_NEXT_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42}
_TRAINED = "the <run>/checkpoints/best.ckpt of a train.py run"


DENSE_ROLES = ("dense", "dense_head")  # the main file's metadata <role>_graph, <role>_sha256, in dense_paths' order


def dense_paths(main: str | Path) -> tuple[Path, Path]:
    """The dense siblings export.py writes beside the ``.onnx`` file ``main``: ``<stem>.dense.onnx``
    (tiles -> features) and ``<stem>.dense-head.onnx`` (features -> windows' logits)."""
    main = Path(main)
    return main.with_name(f"{main.stem}.dense.onnx"), main.with_name(f"{main.stem}.dense-head.onnx")


def sniff(path: Path) -> tuple[str, str]:
    """(TORCH, ONNX or OTHER, what the file is in words) of an existing file."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return OTHER, "an empty file"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return OTHER, "a damaged or truncated zip archive"
        if any(name.endswith("/data.pkl") for name in names):
            return TORCH, "a PyTorch checkpoint"
        return OTHER, "a zip archive without the data.pkl of a PyTorch checkpoint"
    if head.startswith(_LEGACY_MAGIC):
        return TORCH, "a PyTorch checkpoint (legacy format)"
    if head[0] == 0x80:
        return OTHER, (f"a Python pickle of protocol {head[1]}, which torch.save does not write; left unread, "
                       f"since loading it could run code")
    if len(head) > 2 and head[0] == 0x08 and 0 < head[1] < 0x80 and head[2] in _ONNX_NEXT_TAGS:
        return ONNX, "an ONNX model"
    if b"\0" not in head:
        try:
            head.decode("utf-8")
            return OTHER, "a text file"
        except UnicodeDecodeError as err:
            if err.start >= len(head) - 3:  # a character cut by the 4096-byte read
                return OTHER, "a text file"
    return OTHER, "binary data in no format a model is saved in"


def onnx_metadata(path: Path) -> dict[str, str] | None:
    """The ``metadata_props`` of an ONNX file (export.py writes its model card there), or None
    when it does not parse as one."""
    import onnx  # here: 0.7 s to import, and only a refusal needs it

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not ONNX, truncated: the caller says what it is instead
        return None
    return {p.key: p.value for p in model.metadata_props}


def export_origin(meta: dict[str, str] | None) -> str:
    """'best.ckpt, sha256 1a2b3c4d5e6f': the checkpoint an export.py file came from; '' for other files."""
    if not meta or "checkpoint_sha256" not in meta:
        return ""
    return f"{meta.get('checkpoint', 'a checkpoint')}, sha256 {meta['checkpoint_sha256'][:12]}"


def require_model_file(path: str | Path, onnx_ok: bool, key: str = "ckpt") -> str:
    """Refuse, in one line saying what it is, a ``ckpt=`` (or ``key=``) that is not a file of the
    kind it must be: a PyTorch checkpoint, or with ``onnx_ok`` (predict.py) also an ONNX model
    named ``*.onnx``. Returns TORCH or ONNX."""
    path = Path(path).expanduser()
    also = ", or an .onnx file written by export.py" if onnx_ok else ""
    if not path.is_file():
        state = "is a folder, not a file" if path.is_dir() else "no such file"
        raise CrackLightningError(f"{key}={path}: {state}. Point it at {_TRAINED}{also}.")
    kind, what = sniff(path)
    named_onnx = path.suffix.lower() == ".onnx"
    if onnx_ok and named_onnx != (kind == ONNX):
        if kind == OTHER:
            raise CrackLightningError(f"ckpt={path}: not an ONNX model ({what}). Give an .onnx file written by "
                                      f"export.py, or {_TRAINED}.")
        right = ".onnx" if kind == ONNX else ".ckpt"
        raise CrackLightningError(f"ckpt={path} is {what} but named {path.suffix or 'without a suffix'}; predict.py "
                                  f"picks how to run a file by its suffix: copy it to a name ending in {right}.")
    if kind == ONNX and not onnx_ok:
        origin = export_origin(onnx_metadata(path))
        raise CrackLightningError(
            f"{key}={path} is an ONNX model (exported already{f' from {origin}' if origin else ''}): "
            f"{'export.py' if key == 'ckpt' else 'training'} needs the training checkpoint (.ckpt) it came from; "
            f"predict.py runs .onnx files directly.")
    if kind == OTHER:
        raise CrackLightningError(f"{key}={path}: not a PyTorch checkpoint ({what}). Point it at {_TRAINED}{also}.")
    return kind
