"""Input data is read-only, through the real commands (`python -m crack_lightning.cli.data`,
`python -m crack_lightning.cli.validate` as subprocesses): make data deletes only its own
dead temporary folders and never writes into a dataset it did not lay out; validate takes
images and classes by training's rule, reports what training would refuse, and refuses an
unwritable --json before it scans. Every user folder is compared byte for byte afterwards.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from crack_lightning.utils.files import TEMP_MARKER
from crack_lightning.data.sources.install import LAYOUT_MARKER
from crack_lightning.utils.files import HOST
from tests.conftest import REPO, snapshot
from tests.test_download import get_data_overrides, jpeg_bytes, no_proxy, rar_bytes, server  # noqa: F401 - fixtures

CARD = ("dataset_card.md", "dataset_card.json", "dataset_examples.png")


def _run(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"crack_lightning.cli.{module}", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **(env or {})})


def _one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, no trace, exactly one line holding all ``needles``; returns it."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if all(n in line for n in needles)]
    assert len(lines) == 1, out
    return lines[0]


def _dataset(root: Path, classes=("Positive", "Negative"), per_class: int = 2, seed: int = 0) -> Path:
    for c, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            (root / cls / f"{i:05d}.jpg").write_bytes(jpeg_bytes(seed + 10 * c + i))
    return root


def _marker_folder(folder: Path, host: str, pid: int) -> Path:
    (folder / "Positive").mkdir(parents=True)
    (folder / "Positive" / "00001.jpg").write_bytes(b"half an extraction")
    (folder / TEMP_MARKER).write_text(json.dumps({"tool": "crack-lightning", "host": host, "pid": pid}))
    return folder


# --------------------------------------------------------------------------- make data

def test_make_data_removes_only_its_own_dead_temporary_folders(tmp_path, server, rar_bytes):  # noqa: F811
    """Folders named like the staging area but without our marker, or with the marker of a
    live process or of another host, survive byte for byte; our dead run's leftover goes."""
    data = tmp_path / "data"
    dead = subprocess.Popen(["true"])
    dead.wait()
    kept = {
        ".concrete_crack.unpacked": None,                   # the name make data used to rmtree
        ".concrete_crack.unpacked-mine": None,              # today's prefix, no marker
        "..concrete_crack.unpacked.partial-ab12": None,     # archive.py's old pattern
        ".concrete_crack.unpacked-live": (HOST, os.getpid()),        # ours, still running
        ".concrete_crack.unpacked-elsewhere": ("otherhost", dead.pid),  # another machine's
    }
    for name, owner in kept.items():
        if owner:
            _marker_folder(data / name, *owner)
        else:
            (data / name / "Positive").mkdir(parents=True)
            (data / name / "Positive" / "mine.jpg").write_bytes(jpeg_bytes(1))
            (data / name / "notes.txt").write_text("my own work\n")
    stale = _marker_folder(data / ".concrete_crack.unpacked-x7q", HOST, dead.pid)
    before = {name: snapshot(data / name) for name in kept}

    server.files["dataset.rar"] = rar_bytes
    proc = _run("data", *get_data_overrides(tmp_path, server.url("dataset.rar"), rar_bytes, "card=false"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert {name: snapshot(data / name) for name in kept} == before
    assert not stale.exists() and f"Removing {stale}, left by an interrupted run" in proc.stdout
    root = data / "concrete_crack"
    assert sorted(p.name for p in data.iterdir()) == sorted([*kept, "concrete_crack", "downloads"])
    assert sorted(p.name for p in root.iterdir()) == [LAYOUT_MARKER, "Negative", "Positive"]
    layout = json.loads((root / LAYOUT_MARKER).read_text())
    assert layout == {"source": "mendeley", "archive": "Concrete Crack Images for Classification.rar",
                      "sha256": hashlib.sha256(rar_bytes).hexdigest()}


def test_make_data_never_writes_into_a_users_dataset(tmp_path):
    """An existing dataset make data did not lay out: no card, no marker, one log line;
    force=true refuses in one line. The folder is byte-identical afterwards."""
    root = _dataset(tmp_path / "data" / "concrete_crack")
    (root / "README.txt").write_text("photos from site 4, not for redistribution\n")
    before = snapshot(root)
    overrides = [f"paths.data_dir={tmp_path / 'data'}", "source.url=http://127.0.0.1:9/unused"]

    proc = _run("data", *overrides)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in out, out
    line = [ln for ln in out.splitlines() if "not laid out by make data" in ln]
    assert len(line) == 1 and str(root) in line[0] and f"make validate ROOT={root}" in line[0], out
    assert "left as it is" in line[0] and "Writing the dataset card" not in out
    assert snapshot(root) == before and not any((root / name).exists() for name in CARD)

    _one_error_line(_run("data", *overrides, "force=true"), "force=true", str(root), "never deletes data")
    assert snapshot(root) == before


# --------------------------------------------------------------------------- validate

def test_validate_takes_training_view_of_a_linked_three_class_dataset(tmp_path):
    """Links to files outside ROOT are images; a dangling link is a problem; __MACOSX is no
    class; three class folders are three classes, as training takes them (sorted, crack by
    name); the problems give exit 1. ROOT and the originals are byte-identical afterwards."""
    originals = _dataset(tmp_path / "originals", classes=("Positive",), per_class=3)
    root = tmp_path / "linked"
    (root / "Positive").mkdir(parents=True)
    for f in sorted((originals / "Positive").iterdir()):
        (root / "Positive" / f.name).symlink_to(f)
    _dataset(root, classes=("Negative", "Unsure"), per_class=2, seed=50)
    (root / "Negative" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (root / "Negative" / "notes.txt").write_text("site 3\n")
    (root / "Negative" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "__MACOSX" / "Positive").mkdir(parents=True)
    (root / "__MACOSX" / "Positive" / "._00000.jpg").write_bytes(b"\0\5\26\7")
    before = {p: snapshot(p) for p in (root, originals)}

    report_path = tmp_path / "reports" / "linked.json"
    proc = _run("validate", root, "--json", report_path, "--workers", "1")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out, out
    r = json.loads(report_path.read_text())
    assert r["classes"] == r["training"]["classes"] == ["Negative", "Positive", "Unsure"]  # __MACOSX is no class
    assert r["training"]["refused"] is None
    assert {c: v["images"] for c, v in r["per_class"].items()} == {"Negative": 2, "Positive": 3, "Unsure": 2}
    assert r["broken"] == [{"path": "Negative/gone.jpg", "reason": r["broken"][0]["reason"]}]
    assert r["broken"][0]["reason"].startswith("broken link")
    assert [p["path"] for p in r["non_image_files"]] == ["Negative/notes.txt"]
    assert {i["path"] for i in r["ignored"]} == {"Negative/.DS_Store", "__MACOSX"}
    assert {k for k, v in r["summary"]["counts"].items() if v} == {"broken", "non_image_files"}
    assert "Negative/gone.jpg" in proc.stdout
    assert {p: snapshot(p) for p in (root, originals)} == before


def test_validate_agrees_with_training_on_classes_and_images(tmp_path, capsys):
    """In process (training's own functions to compare with): the same image files, the same
    refusal text, and --positive-class naming the crack folder as data.positive_class does."""
    from crack_lightning import CrackLightningError
    from crack_lightning.data.imagefolder import resolve_class_names, scan_files
    from crack_lightning.cli.validate import main
    from crack_lightning.data.quality.validate import validate

    root = _dataset(tmp_path / "site", classes=("Damaged", "Intact"), per_class=2)
    (root / "Intact" / "nested").mkdir()
    (root / "Intact" / "nested" / "a.png").symlink_to(root / "Damaged" / "00000.jpg")  # a second path
    try:
        resolve_class_names(root, None)
    except CrackLightningError as err:
        training_says = str(err)
    r = validate(root, workers=1)
    assert r["training"]["refused"] == training_says and r["summary"]["counts"]["class_folders"] == 1

    r = validate(root, workers=1, positive_class="Damaged")
    classes = resolve_class_names(root, "Damaged")
    samples, _, _ = scan_files(root, classes)
    assert r["classes"] == r["training"]["classes"] == classes == ["Intact", "Damaged"]
    assert sum(c["images"] for c in r["per_class"].values()) == len(samples) == 4
    assert [i["reason"] for i in r["ignored"]] == ["same file as " + str(root.resolve() / "Damaged" / "00000.jpg")]
    assert r["summary"]["clean"] is True

    assert main([str(root), "--positive-class", "Damaged", "--workers", "1"]) == 0
    capsys.readouterr()
    assert main([str(root), "--positive-class", "Cracks"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --positive-class Cracks: not a class folder"), err


def test_validate_refuses_an_unwritable_report_before_scanning(tmp_path):
    """--json under a regular file (a real OSError even for root), --json inside ROOT, a
    --splits file that is not there: one line, exit 2 (a write after the scan was a trace),
    and ROOT untouched."""
    root = _dataset(tmp_path / "data")
    (tmp_path / "afile").write_text("a file, not a folder\n")
    before = snapshot(root)

    report = tmp_path / "afile" / "report.json"
    _one_error_line(_run("validate", root, "--json", report), f"--json {report}", "is a file")
    inside = root / "Positive" / "report.json"
    _one_error_line(_run("validate", root, "--json", inside), f"--json {inside}", "only reads")
    splits = tmp_path / "afile" / "splits.csv"
    _one_error_line(_run("validate", root, "--splits", splits), f"--splits {splits}", "no such file")
    assert snapshot(root) == before
