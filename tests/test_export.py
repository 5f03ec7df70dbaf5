"""ONNX export: the real export.py, onnxruntime parity on real images (batch sizes vary, sizes
too: the graph resizes), the metadata that lets OnnxBackend stand in for TorchBackend, the file
run by numpy and onnxruntime alone, and one-line user errors."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from crack_lightning import CrackLightningError, exit_on_user_error
from crack_lightning.data.augmentation import eval_transform
from crack_lightning.utils.files import sha256_file
from crack_lightning.inference.backends import TorchBackend, open_backend
from crack_lightning.inference.checkpoint import load_classifier
from crack_lightning.export.run import check_batch, export
from crack_lightning.export.onnx import ParityError, parity_check
from crack_lightning.inference.onnx_backend import OnnxBackend
from crack_lightning.model_card import ModelCard, Preprocessing
from tests.conftest import CONF, REPO, compose_cfg

ATOL = 1e-4


def run_export_py(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    """Run the real `python export.py ...` in a subprocess."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(REPO / "export.py"), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def export_cfg(tmp_path: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="export", overrides=[f"paths.log_dir={tmp_path / 'logs'}", *overrides])


def copy_run(trained_run: Path, dest: Path, splits: bool = True) -> Path:
    """A copy of the trained run's checkpoint (and splits.csv) laid out as <run>/checkpoints/best.ckpt."""
    (dest / "checkpoints").mkdir(parents=True)
    shutil.copy(trained_run / "checkpoints" / "best.ckpt", dest / "checkpoints" / "best.ckpt")
    if splits:
        shutil.copy(trained_run / "splits.csv", dest / "splits.csv")
    return dest / "checkpoints" / "best.ckpt"


def preprocessed(files: list[Path], preprocessing: Preprocessing) -> np.ndarray:
    transform = eval_transform(preprocessing.to_timm_data_config())
    batch = []
    for file in files:
        with Image.open(file) as img:
            batch.append(transform(img.convert("RGB")).numpy())
    return np.stack(batch)


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> tuple[Path, str]:
    """`python export.py ckpt=<copy of the trained run>/checkpoints/best.ckpt`, default output."""
    tmp = tmp_path_factory.mktemp("export")
    ckpt = copy_run(trained_run, tmp / "run")
    start = time.perf_counter()
    result = run_export_py([f"ckpt={ckpt}", f"paths.log_dir={tmp / 'logs'}"])
    print(f"\nexport.py subprocess: {time.perf_counter() - start:.1f} s")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return ckpt.with_suffix(".onnx"), output


def test_export_py_writes_a_checked_onnx_file(exported):
    path, output = exported
    assert path.is_file() and path.name == "best.onnx", "default output: <ckpt stem>.onnx beside the checkpoint"
    assert not [p for p in path.parent.iterdir() if "partial" in p.name]
    assert "test images of the run's splits.csv" in output, output[-2000:]
    diff = float(re.search(r"max \|dp\| = (\S+)", output).group(1))
    print(f"custom_cnn parity (export.py, splits.csv test images): max |dp| = {diff:.2e}")
    assert diff <= ATOL


def test_the_normalisation_spread_for_int8_changes_no_number(exported, tmp_path):
    """quantize.spread_normalisation (format=onnx-int8 runs it before quantizing): mean and std as
    [1, 3, h, w] maps, since onnxruntime's channels-last int8 graph broadcasts a 3-vector slowly;
    the same probabilities at any photo size."""
    from crack_lightning.export import quantize

    path, _ = exported
    model = onnx.load(str(path))
    preprocessing = quantize.preprocessing_nodes(model)
    before = OnnxBackend(path)
    h, w = before.card.preprocessing.input_size
    quantize.spread_normalisation(model, preprocessing, (h, w))
    onnx.save(model, str(tmp_path / "spread.onnx"))
    constants = {init.name: tuple(init.dims) for init in model.graph.initializer}
    normalising = [name for node in preprocessing if node.op_type in ("Sub", "Mul")
                   for name in node.input if constants.get(name, ())[:2] == (1, 3)]
    assert [constants[name] for name in normalising] == [(1, 3, h, w)] * 2, constants
    after = OnnxBackend(tmp_path / "spread.onnx")
    rng = np.random.default_rng(0)
    for shape in [(3, h, w, 3), (2, 45, 70, 3), (1, 300, 227, 3)]:  # at size, smaller, larger and not square
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        np.testing.assert_array_equal(after.logits(pixels), before.logits(pixels))


def test_onnx_file_has_dynamic_batch_and_the_model_card(exported):
    path, _ = exported
    model = onnx.load(str(path))
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "pixels" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert all(d.dim_param and not d.dim_value for d in dims[:3]) and dims[3].dim_value == 3, "batch, H, W dynamic"
    assert [o.name for o in model.graph.output] == ["crack_probability", "logits"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert {"preprocessing", "class_names", "threshold", "temperature", "checkpoint_sha256",
            "operating_point", "crack_lightning_version", "contract"} <= set(meta)
    assert meta["checkpoint_sha256"] == sha256_file(path.with_suffix(".ckpt"))
    assert meta["contract_version"] == "2" and meta["format"] == "onnx"
    dense, head = path.with_name("best.dense.onnx"), path.with_name("best.dense-head.onnx")  # named and hashed
    assert meta["dense_graph"] == dense.name and meta["dense_sha256"] == sha256_file(dense)
    assert meta["dense_head_graph"] == head.name and meta["dense_head_sha256"] == sha256_file(head)
    assert [i.name for i in onnx.load(str(dense)).graph.input] == ["tiles"]
    assert [i.name for i in onnx.load(str(head)).graph.input] == ["features", "rows", "cols"]


def test_onnx_backend_reproduces_the_torch_backend(exported, tiny_data):
    path, _ = exported
    onnx_backend, torch_backend = open_backend(path), open_backend(path.with_suffix(".ckpt"))
    assert isinstance(onnx_backend, OnnxBackend) and isinstance(torch_backend, TorchBackend)
    for attr in ("class_names", "preprocessing", "threshold", "temperature", "operating_point"):
        assert getattr(onnx_backend.card, attr) == getattr(torch_backend.card, attr), attr
    assert onnx_backend.model_hash == sha256_file(path)[:12] != torch_backend.model_hash
    assert onnx_backend.checkpoint_sha256 == torch_backend.loaded.sha256

    images = preprocessed(sorted(tiny_data.rglob("*.jpg")), onnx_backend.card.preprocessing)
    expected = torch_backend(images)
    assert expected.std() > 0, "a model that says the same for every image compares nothing"
    for batch in (7, 3):  # two batch sizes through the same file
        got = np.concatenate([onnx_backend(images[i:i + batch]) for i in range(0, len(images), batch)])
        assert got.dtype == np.float32 and got.shape == (len(images),)
        assert np.abs(got - expected).max() <= ATOL
    assert np.abs(onnx_backend(torch.from_numpy(images[:2])) - expected[:2]).max() <= ATOL
    # the tiny run's fitted temperature flattens its probabilities; the logits agree too
    logits = onnx_backend.logits(images)
    with torch.no_grad():
        expected_logits = torch_backend.model(torch.from_numpy(images)).numpy()
    assert np.abs(logits - expected_logits).max() <= ATOL
    print(f"custom_cnn parity (OnnxBackend, {len(images)} images): max |dp| = {np.abs(got - expected).max():.2e}, "
          f"max |dlogit| = {np.abs(logits - expected_logits).max():.2e}")


def test_parity_check_fails_beyond_atol(exported, tiny_data):
    path, _ = exported
    backend = OnnxBackend(path)
    images = preprocessed(sorted(tiny_data.rglob("*.jpg"))[:3], backend.card.preprocessing)
    assert parity_check(backend, backend, images) == 0.0
    with pytest.raises(ParityError, match=r"max \|Δp\| = 0.001"):
        parity_check(lambda x: backend(x) + np.float32(1e-3), backend, images, atol=ATOL)


@pytest.mark.parametrize("overrides, message", [
    (["ckpt={tmp}/nope.ckpt", "format=tflite"], "format=tflite: not supported"),
    (["ckpt={tmp}/nope.ckpt"], "nope.ckpt: no such file"),
    ([], "ckpt= is required"),
    (["ckpt={tmp}/nope.ckpt", "output={tmp}/model.bin"], "name it *.onnx"),
])
def test_user_errors_are_one_line_and_exit_2(tmp_path, caplog, overrides, message):
    """What export.py does with them (its task is wrapped in exit_on_user_error), in-process:
    a subprocess costs seconds of imports, and the real export.py runs in `exported`."""
    cfg = export_cfg(tmp_path, [o.format(tmp=tmp_path) for o in overrides])
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(export)(cfg)
    assert exit_info.value.code == 2
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert message in record.getMessage() and "\n" not in record.getMessage()


def test_unknown_opset_is_a_user_error(exported, tmp_path):
    path, _ = exported
    cfg = export_cfg(tmp_path, [f"ckpt={path.with_suffix('.ckpt')}", f"output={tmp_path / 'm.onnx'}", "opset=40"])
    with pytest.raises(CrackLightningError, match="opset=40: onnx .* knows opsets 1 to"):
        export(cfg)


def test_check_falls_back_to_noise_without_images(trained_run, tmp_path, caplog):
    loaded = load_classifier(copy_run(trained_run, tmp_path / "run", splits=False))
    with caplog.at_level(logging.WARNING):
        images, source = check_batch(loaded, None, 4)
    h, w = loaded.card.preprocessing.input_size
    assert [image.size for image in images] == [(w * 5 // 4, h * 3 // 2 + 1), (w, h)] * 2, "the resize is checked too"
    assert source == "random-noise inputs" and "random noise" in caplog.text


@pytest.fixture(scope="module")
def mnv2_export(tmp_path_factory, tiny_data) -> tuple[Path, Path, list[Path], dict]:
    """The main user model, untrained (pretrained=false) but with batch-norm statistics of
    real images and a non-trivial operating point, exported in-process with input= images of
    several sizes (227 px patches, and others larger, smaller and not square)."""
    tmp_path = tmp_path_factory.mktemp("mnv2")
    cfg = compose_cfg(tmp_path, tiny_data, ["backbone=mobilenetv2"])
    model = instantiate(cfg.model)
    preprocessing = Preprocessing.from_timm_data_config({**model.data_config, "input_size": (3, 64, 64)},
                                                        patch_size=(227, 227))
    model.card = ModelCard(["Negative", "Positive"], preprocessing, config=OmegaConf.to_container(cfg, resolve=True))
    model.set_operating_point({"temperature": 1.7, "threshold": 0.3})
    files = sorted(tiny_data.rglob("*.jpg"))
    images = preprocessed(files, preprocessing)
    model.train()
    with torch.no_grad():  # batch-norm running statistics from real images, not the init's 0/1
        for _ in range(3):
            model(torch.from_numpy(images))
    model.eval()
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    ckpt = tmp_path / "mnv2" / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save(checkpoint, ckpt)
    sized = tmp_path / "sized"
    sized.mkdir()
    for i, (file, size) in enumerate(zip(files[::3], [None, (300, 180), (64, 64), (100, 140), (41, 97)] * 2)):
        with Image.open(file) as img:
            (img.resize(size, Image.BICUBIC) if size else img.convert("RGB")).save(sized / f"{i:02d}.png")
    result = export(export_cfg(tmp_path, [f"ckpt={ckpt}", f"input={sized}", f"output={tmp_path / 'mnv2.onnx'}"]))
    return tmp_path / "mnv2.onnx", ckpt, sorted(sized.iterdir()), result


def test_mobilenetv2_exports_with_parity(mnv2_export, tiny_data):
    onnx_file, ckpt, sized, result = mnv2_export
    print(f"mobilenetv2_100 parity (export, 8 input= images): max |dp| = {result['max_abs_diff']:.2e} on the same "
          f"pixels, {result['resize_abs_diff']:.2e} resized in the graph, dense {result['dense_abs_diff']:.2e}; "
          f"export {result['seconds']:.1f} s")
    assert result["max_abs_diff"] <= ATOL and result["check_images"].startswith("images from input=")
    assert result["resize_abs_diff"] <= 1e-3 and result["dense_abs_diff"] <= ATOL

    backend, reference = OnnxBackend(onnx_file), TorchBackend(load_classifier(ckpt))
    assert (backend.card.threshold, backend.card.temperature) == (pytest.approx(0.3), pytest.approx(1.7))
    assert backend.card.preprocessing.input_size == (64, 64)
    images = preprocessed(sorted(tiny_data.rglob("*.jpg")), backend.card.preprocessing)
    expected = reference(images)
    assert expected.std() > 1e-3, "batch-norm statistics of real images give spread probabilities"
    assert np.abs(backend(images[:5]) - expected[:5]).max() <= ATOL
    assert np.abs(backend(images) - expected).max() <= ATOL
    as_uint8 = backend.pixels(images)  # eval_transform's floats back to its uint8 pixels, NHWC and NCHW alike
    assert as_uint8.dtype == np.uint8 and np.abs(backend(as_uint8.transpose(0, 3, 1, 2)) - expected).max() <= ATOL


NUMPY_ONLY = """
import json, sys
class NoTorch:  # the file must run without them: importing one fails
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm", "crack_lightning"):
            raise ImportError(name + " is not to be used")
sys.meta_path.insert(0, NoTorch())
import numpy as np, onnxruntime as ort
from PIL import Image
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
print(json.dumps({"threshold": float(meta["threshold"]), "p": [float(session.run(["crack_probability"], {
    "pixels": np.asarray(Image.open(f).convert("RGB"))[None]})[0][0]) for f in sys.argv[2:]]}))
"""


def test_the_file_runs_with_numpy_and_onnxruntime_alone(mnv2_export):
    """Images of every size straight from PIL into the graph, in a Python where torch cannot be
    imported, agree with PIL -> eval_transform -> the checkpoint within 1e-3."""
    onnx_file, ckpt, sized, _ = mnv2_export
    run = subprocess.run([sys.executable, "-c", NUMPY_ONLY, str(onnx_file), *map(str, sized)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout)
    reference = TorchBackend(load_classifier(ckpt))
    expected = reference(preprocessed(sized, reference.card.preprocessing))
    diff = np.abs(np.array(got["p"]) - expected).max()
    print(f"numpy + onnxruntime alone, {len(sized)} images of {len({Image.open(f).size for f in sized})} sizes: "
          f"max |dp| = {diff:.2e}")
    assert got["threshold"] == pytest.approx(0.3) and diff <= 1e-3


def test_predict_from_the_onnx_file_matches_the_checkpoint(exported, tmp_path, tiny_data):
    """predict.py with ckpt=<file>.onnx: onnxruntime runs the model (no checkpoint needed),
    the threshold comes from the file's metadata, the rows match the checkpoint's."""
    from tests.test_predict import compose_predict, read_rows
    from crack_lightning.inference.predict import predict

    onnx_file, _ = exported
    ckpt = onnx_file.with_suffix(".ckpt")
    photos = tmp_path / "photos"
    shutil.copytree(tiny_data, photos)
    (photos / "Positive" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    by_backend = {}
    for name, model in (("onnx", onnx_file), ("torch", ckpt)):
        predict(compose_predict([f"ckpt={model}", f"input={photos}", f"output_dir={tmp_path / name}"]))
        by_backend[name] = read_rows(tmp_path / name / "predictions.csv")
    onnx_rows, torch_rows = by_backend["onnx"], by_backend["torch"]
    assert [r["path"] for r in onnx_rows] == [r["path"] for r in torch_rows] and len(onnx_rows) == 25
    assert {r["model_hash"] for r in onnx_rows} == {sha256_file(onnx_file)[:12]}
    assert onnx_rows[0]["threshold"] == torch_rows[0]["threshold"]
    for o, t in zip(onnx_rows, torch_rows):
        assert o["error"] == t["error"] and o["label"] == t["label"]
        if not o["error"]:
            assert abs(float(o["crack_probability"]) - float(t["crack_probability"])) <= 1e-4
    assert sum(bool(r["error"]) for r in onnx_rows) == 1


def test_float_input_turns_back_into_its_exact_pixels(exported):
    """Every level of every channel through eval_transform (torchvision's uint8 -> float ->
    Normalize) and back: the pixels the graph then resizes (at input size: not at all) are the
    very ones PyTorch normalised."""
    path, _ = exported
    backend = OnnxBackend(path)
    h, w = backend.card.preprocessing.input_size
    levels = np.broadcast_to(np.arange(256, dtype=np.uint8).repeat(h * w // 256 + 1)[:h * w].reshape(h, w, 1),
                             (h, w, 3)).copy()
    levels[..., 1] = levels[..., 1][::-1]  # each channel sees every level, differently placed
    floats = eval_transform(backend.card.preprocessing.to_timm_data_config())(Image.fromarray(levels))
    assert (backend.pixels(floats[None]) == levels[None]).all()
    assert (backend.pixels(torch.from_numpy(levels).permute(2, 0, 1)[None].numpy()) == levels[None]).all()


def test_the_dense_graph_scores_whole_photos_as_pytorch_does(exported, tiny_data):
    """tile_mode=dense from the .onnx file: the same windows, geometry and probabilities as
    from the checkpoint; a file without its dense sibling (or with another) says what to do."""
    from crack_lightning.inference.dense import DenseUnsupported
    from crack_lightning.inference.photos import PhotoScorer

    path, _ = exported
    onnx_backend, torch_backend = OnnxBackend(path), TorchBackend(load_classifier(path.with_suffix(".ckpt")))
    assert onnx_backend.dense_geometry() == torch_backend.dense_geometry()
    tiles = [np.asarray(Image.open(f).convert("RGB")) for f in sorted(tiny_data.rglob("*.jpg"))[::4][:6]]
    photo = Image.fromarray(np.concatenate([np.concatenate(tiles[:3], 1), np.concatenate(tiles[3:], 1)], 0))
    scorers = [PhotoScorer(b, mode="dense") for b in (onnx_backend, torch_backend)]
    assert [s.mode for s in scorers] == ["dense", "dense"]
    got, expected = (scorer(photo) for scorer in scorers)
    assert got.probabilities.shape == expected.probabilities.shape and got.probabilities.size > 4
    assert np.abs(got.probabilities - expected.probabilities).max() <= ATOL
    assert np.abs(got.classes - expected.classes).max() <= ATOL

    alone = path.parent / "alone"
    alone.mkdir()
    shutil.copy(path, alone / path.name)
    shutil.copy(path.with_name("best.dense-head.onnx"), alone)
    with pytest.raises(DenseUnsupported, match="best.dense.onnx, one of best.onnx's dense graphs, is not beside it"):
        OnnxBackend(alone / path.name).dense_geometry()
    (alone / "best.dense.onnx").write_bytes(b"another graph")
    with pytest.raises(DenseUnsupported, match="SHA-256 differs.*tile_mode=windows"):
        OnnxBackend(alone / path.name).dense_geometry()
    with pytest.raises(CrackLightningError, match="is the dense graph of best.onnx"):
        OnnxBackend(path.with_name("best.dense.onnx"))


def test_an_existing_dense_sibling_is_refused_unless_overwrite(exported, tmp_path):
    from crack_lightning.inference.settings import check_export

    ckpt = exported[0].with_suffix(".ckpt")
    (tmp_path / "m.dense.onnx").write_text("someone's notes")
    cfg = export_cfg(tmp_path, [f"ckpt={ckpt}", f"output={tmp_path / 'm.onnx'}"])
    with pytest.raises(CrackLightningError, match=r"m.dense.onnx, a dense graph written beside m.onnx, exists "
                                                  r"\(a text file\).*overwrite=true"):
        check_export(cfg)
    cfg.overwrite = True
    assert check_export(cfg) == tmp_path / "m.onnx"
    int8 = export_cfg(tmp_path, [f"ckpt={ckpt}", "format=onnx-int8"])
    assert check_export(int8) == ckpt.with_name("best-int8.onnx"), "onnx-int8's default output"
