"""predict.py and export.py never write into your data, and a wrong setting or file is one line.

Issue 14, items 4, 11, 13 and 15. Every refusal: exit status 2, exactly one error line naming the
key or file, no traceback, never torch's "weights_only=False" advice, and the files involved
byte-identical afterwards. Refusals made before torch is imported go through the real commands
(half a second each); one refusal that needs torch does too; the rest of the messages are
checked in-process, where the same code raises them.
"""

from __future__ import annotations

import logging
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image

from crack_lightning import CrackLightningError, exit_on_user_error
from crack_lightning.utils.files import sha256_file
from crack_lightning.inference.checkpoint import load_classifier
from crack_lightning.inference.model_files import ONNX, OTHER, TORCH, sniff
from crack_lightning.inference.predict import predict
from crack_lightning.inference.settings import check_export
from tests.conftest import REPO, refused, run_py, snapshot
from tests.test_export import export_cfg
from tests.test_predict import compose_predict


def refused_in_process(task, cfg, caplog, *words: str) -> str:
    """What the command does with ``cfg`` (its task is wrapped in exit_on_user_error), in-process."""
    caplog.clear()
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(task)(cfg)
    assert exit_info.value.code == 2
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    line = record.getMessage()
    assert "\n" not in line and "weights_only=False" not in line, line
    for word in words:
        assert word in line, line
    return line


def tiny_onnx(path: Path, meta: dict[str, str]) -> Path:
    """A valid ONNX model with export.py's metadata keys (made by hand: no export needed)."""
    value = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None]) for name in ("images", "crack_probability")]
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["crack_probability"])], "g",
                              value[:1], value[1:])
    model = helper.make_model(graph)
    helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def ckpt(trained_run) -> Path:
    """The shared run's checkpoint, read only: each test asserts it is unchanged."""
    path = trained_run / "checkpoints" / "best.ckpt"
    digest = sha256_file(path)
    yield path
    assert sha256_file(path) == digest


@pytest.fixture
def photos(tmp_path) -> Path:
    """The user's folder: a photo, and a predictions.csv and heatmaps/x.png of their own."""
    root = tmp_path / "photos"
    (root / "heatmaps").mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(root / "wall.jpg")
    (root / "predictions.csv").write_text("path,my_notes\nwall.jpg,checked by hand on site\n")
    Image.new("RGB", (32, 32), "red").save(root / "heatmaps" / "x.png")
    return root


# -- item 4: the output folder is never the input, inside it, or someone's folder ------------------

@pytest.mark.parametrize("where, words", [
    ("photos", ["output_dir=", "lies inside input="]),          # used to overwrite predictions.csv, heatmaps/
    ("photos/results", ["output_dir=", "lies inside input="]),
    ("elsewhere", ["output_dir=", "holds notes.txt", "new or empty folder"]),
])
def test_predict_py_writes_neither_into_the_photos_nor_into_a_used_folder(tmp_path, ckpt, photos, where, words):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("the user's own\n")
    before = {p: snapshot(p) for p in (photos, elsewhere)}
    result = run_py("predict.py", [f"ckpt={ckpt}", f"input={photos}", "tile=true", f"output_dir={tmp_path / where}",
                                   f"paths.log_dir={tmp_path / 'logs'}"])
    line = refused(result, *words)
    assert str(tmp_path / where) in line
    assert {p: snapshot(p) for p in before} == before, "file list, sizes and sha256 as they were"
    assert not (tmp_path / "logs").exists(), "refused before a run folder was made"


# -- item 11: impossible settings and incomplete checkpoints, before any photo ---------------------

def test_predict_py_refuses_a_bad_heatmap_size_before_the_first_photo(tmp_path, ckpt, photos):
    """`tile=true heatmap.max_side=0` used to crash after the first photo, with no predictions.csv."""
    before = snapshot(photos)
    out = tmp_path / "out"
    result = run_py("predict.py", [f"ckpt={ckpt}", f"input={photos}", "tile=true", "heatmap.max_side=0",
                                   f"output_dir={out}", f"paths.log_dir={tmp_path / 'logs'}"])
    refused(result, "heatmap.max_side=0", "pixels from 64 to 8192")
    assert not out.exists() and snapshot(photos) == before


def test_settings_are_checked_without_importing_torch():
    """The entry scripts' imports and checks stay light: a refusal costs half a second, not ten."""
    code = ("import sys, predict, export, crack_lightning.inference.model_files; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("override, words", [
    ("tile_size=abc", ["tile_size='abc'", "[height, width]"]),
    ("tile_stride=abc", ["tile_stride='abc'"]),
    ("tile_size=[227,0]", ["tile_size=[227, 0]"]),
    ("num_workers=abc", ["num_workers='abc'", "auto or a whole number >= 0"]),
    ("batch_size=0", ["batch_size=0", "auto or a whole number >= 1"]),
    ("threshold=abc", ["threshold='abc'", "[0, 1]"]),
    ("threshold=1.5", ["threshold=1.5"]),
    ("device=gpu", ["device='gpu'", "auto, cpu, cuda or cuda:N"]),
    ("tile=maybe", ["tile='maybe'", "true or false"]),
    ("tile_mode=fast", ["tile_mode='fast'", "auto, dense or windows"]),
    ("tile_block_megapixels=0", ["tile_block_megapixels=0", "megapixels"]),
    ("heatmap.max_side=100000", ["heatmap.max_side=100000"]),
    ("heatmap.alpha=1.5", ["heatmap.alpha=1.5", "[0, 1]"]),
    ("heatmap.cmap=turbid", ["heatmap.cmap='turbid'", "matplotlib colormap"]),
])
def test_bad_predict_settings_are_one_line_naming_the_key(tmp_path, caplog, ckpt, photos, override, words):
    cfg = compose_predict([f"ckpt={ckpt}", f"input={photos}", f"output_dir={tmp_path / 'out'}", override])
    refused_in_process(predict, cfg, caplog, *words)
    assert not (tmp_path / "out").exists()


def test_device_cuda_needs_a_gpu(tmp_path, caplog, ckpt, photos, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_predict([f"ckpt={ckpt}", f"input={photos}", f"output_dir={tmp_path}", "device=cuda"])
    refused_in_process(predict, cfg, caplog, "device=cuda", "no CUDA GPU", "device=cpu", "device=auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg = compose_predict([f"ckpt={ckpt}", f"input={photos}", f"output_dir={tmp_path}", "device=cuda:3"])
    refused_in_process(predict, cfg, caplog, "device=cuda:3", "cuda:0 to cuda:0")


def edited_checkpoint(ckpt: Path, dest: Path, edit) -> Path:
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    edit(checkpoint)
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, dest)
    return dest


def test_incomplete_or_mismatched_checkpoints_are_one_line(tmp_path, caplog, ckpt, photos):
    """A checkpoint whose preprocessing lacks keys, or whose weights do not fit its config's model:
    one line naming the file and what is wrong, not a KeyError or load_state_dict's trace."""
    def drop_preprocessing(c):
        del c["crack_lightning"]["preprocessing"]["interpolation"], c["crack_lightning"]["preprocessing"]["std"]

    def reshape_weights(c):
        state = c["state_dict"]
        first = next(k for k, v in state.items() if v.ndim == 4)
        state[first] = state[first][:, :1]
        del state[next(k for k in reversed(state) if k.endswith("weight"))]
        state["extra.weight"] = torch.zeros(1)

    lacking = edited_checkpoint(ckpt, tmp_path / "lacking.ckpt", drop_preprocessing)
    cfg = compose_predict([f"ckpt={lacking}", f"input={photos}", f"output_dir={tmp_path / 'out'}"])
    refused_in_process(predict, cfg, caplog, f"ckpt={lacking}", "crack_lightning.preprocessing.interpolation",
                       "crack_lightning.preprocessing.std")
    mixed = edited_checkpoint(ckpt, tmp_path / "mixed.ckpt", reshape_weights)
    line = refused_in_process(predict, compose_predict([f"ckpt={mixed}", f"input={photos}",
                                                        f"output_dir={tmp_path / 'out'}"]), caplog,
                              f"ckpt={mixed}", "do not fit the model its config describes (custom_cnn)")
    assert "1 missing" in line and "1 unexpected (e.g. extra.weight)" in line and "1 of another shape" in line
    assert not (tmp_path / "out").exists()


# -- item 13: a file that is not a checkpoint says what it is, never "weights_only=False" ----------

class Payload:  # what a checkpoint never holds: an object of an arbitrary class
    pass


@pytest.mark.parametrize("script, name, make, words", [
    ("predict.py", "model.ckpt", lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
     ["not a PyTorch checkpoint (binary data"]),
    ("predict.py", "model.onnx", lambda p: p.write_text("not really a model\n"), ["not an ONNX model (a text file)"]),
    ("export.py", "best.onnx", lambda p: tiny_onnx(p, {"checkpoint": "best.ckpt", "checkpoint_sha256": "ab" * 32}),
     ["is an ONNX model (exported already from best.ckpt, sha256 abababababab)",
      "export.py needs the training checkpoint (.ckpt)", "predict.py runs .onnx files directly"]),
])
def test_a_file_that_is_no_checkpoint_is_refused_before_torch(tmp_path, photos, script, name, make, words):
    path = tmp_path / "models" / name
    path.parent.mkdir()
    make(path)
    before = {p: snapshot(p) for p in (path.parent, photos)}
    result = run_py(script, [f"ckpt={path}", f"input={photos}", f"paths.log_dir={tmp_path / 'logs'}"])
    refused(result, f"ckpt={path}", *words)
    assert {p: snapshot(p) for p in before} == before, "nothing written beside the file or into the photos"


def test_export_py_refuses_a_checkpoint_holding_python_objects(tmp_path):
    """torch's weights_only loader refuses it; we say why, not torch's advice to load it unsafely."""
    path = tmp_path / "run" / "checkpoints" / "best.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "crack_lightning": {"payload": Payload()}}, path)
    before = snapshot(path.parent)
    result = run_py("export.py", [f"ckpt={path}", f"paths.log_dir={tmp_path / 'logs'}"])
    refused(result, f"ckpt={path}", "holds Python objects beyond tensors and plain containers",
            "Payload", "could run code")
    assert snapshot(path.parent) == before, "no best.onnx beside it"


def test_sniff_says_what_a_file_is(tmp_path):
    files = {
        "text.ckpt": b"epoch,loss\n0,0.7\n",
        "empty.ckpt": b"",
        "other.zip": None,
        "truncated.ckpt": None,
        "plain.pkl": pickle.dumps({"weights": [1, 2]}),
    }
    for name, data in files.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("photos/a.txt", "x")
    torch.save({"w": torch.zeros(2)}, tmp_path / "new.ckpt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    (tmp_path / "truncated.ckpt").write_bytes((tmp_path / "new.ckpt").read_bytes()[:200])
    tiny_onnx(tmp_path / "m.onnx", {})
    kinds = {name: sniff(tmp_path / name) for name in [*files, "new.ckpt", "legacy.ckpt", "m.onnx"]}
    kind, pickled = kinds.pop("plain.pkl")
    assert kind == OTHER and "Python pickle" in pickled and "could run code" in pickled
    assert kinds == {
        "text.ckpt": (OTHER, "a text file"),
        "empty.ckpt": (OTHER, "an empty file"),
        "other.zip": (OTHER, "a zip archive without the data.pkl of a PyTorch checkpoint"),
        "truncated.ckpt": (OTHER, "a damaged or truncated zip archive"),
        "new.ckpt": (TORCH, "a PyTorch checkpoint"),
        "legacy.ckpt": (TORCH, "a PyTorch checkpoint (legacy format)"),
        "m.onnx": (ONNX, "an ONNX model"),
    }
    # a checkpoint under an .onnx name (or the reverse): predict.py runs a file by its suffix
    shutil.copy(tmp_path / "new.ckpt", tmp_path / "new.onnx")
    with pytest.raises(CrackLightningError, match=r"is a PyTorch checkpoint but named \.onnx.*ending in \.ckpt"):
        predict(compose_predict([f"ckpt={tmp_path / 'new.onnx'}", "input=.", f"output_dir={tmp_path / 'out'}"]))
    with pytest.raises(CrackLightningError, match="is an ONNX model"):  # in-process callers are covered too
        load_classifier(tmp_path / "m.onnx")


# -- item 15: export.py replaces an existing file only with overwrite=true -------------------------

def test_export_py_refuses_to_overwrite_an_existing_export(tmp_path, ckpt):
    copy = tmp_path / "run" / "checkpoints" / "best.ckpt"
    copy.parent.mkdir(parents=True)
    shutil.copy(ckpt, copy)
    (tmp_path / "models").mkdir()
    existing = tiny_onnx(tmp_path / "models" / "crack.onnx",
                         {"checkpoint": "best.ckpt", "checkpoint_sha256": sha256_file(copy)})
    before = {p: snapshot(p) for p in (tmp_path / "run", tmp_path / "models")}
    result = run_py("export.py", [f"ckpt={copy}", f"output={existing}", f"paths.log_dir={tmp_path / 'logs'}"])
    refused(result, f"output={existing} exists", "export of this very checkpoint: best.ckpt, sha256", "overwrite=true")
    assert {p: snapshot(p) for p in before} == before


def test_the_default_output_follows_the_same_rule(tmp_path, ckpt):
    """output=null writes <ckpt stem>.onnx beside the checkpoint: refused there too, said what the
    file is; overwrite=true lets it through (checked before the model is loaded)."""
    copy = tmp_path / "run" / "checkpoints" / "best.ckpt"
    copy.parent.mkdir(parents=True)
    shutil.copy(ckpt, copy)
    beside = copy.with_suffix(".onnx")
    cases = [("written by hand\n", "(a text file)"),
             ({"checkpoint": "other.ckpt", "checkpoint_sha256": "cd" * 32}, "export of another checkpoint: other.ckpt"),
             ({}, "an ONNX model export.py did not write")]
    for content, words in cases:
        beside.write_text(content) if isinstance(content, str) else tiny_onnx(beside, content)
        with pytest.raises(CrackLightningError) as err:
            check_export(export_cfg(tmp_path, [f"ckpt={copy}"]))
        assert f"{beside} (output=null: <ckpt stem>.onnx beside the checkpoint) exists" in str(err.value)
        assert words in str(err.value) and "overwrite=true" in str(err.value)
    assert check_export(export_cfg(tmp_path, [f"ckpt={copy}", "overwrite=true"])) == beside
    with pytest.raises(CrackLightningError, match="overwrite='yes' \\(expected true or false\\)"):
        check_export(export_cfg(tmp_path, [f"ckpt={copy}", "overwrite=yes"]))
