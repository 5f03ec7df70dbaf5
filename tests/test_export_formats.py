"""Export formats beside fp32 ONNX: ``format=onnx-int8`` (calibrated on the run's validation
images, gated on its test split) and files of the old contract (float32 NCHW input), which
predict.py and evaluate.py still run."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest
import torch

from crack_lightning import exit_on_user_error
from crack_lightning.export import quantize
from crack_lightning.export.graph import graph_program
from crack_lightning.export.onnx import OUTPUTS, _Probabilities, metadata
from crack_lightning.export.run import export
from crack_lightning.inference.backends import TorchBackend
from crack_lightning.inference.checkpoint import load_classifier
from crack_lightning.inference.dense import DenseUnsupported
from crack_lightning.inference.onnx_backend import OnnxBackend
from crack_lightning.inference.predict import predict
from tests.test_evaluate import compose_eval
from tests.test_export import copy_run, export_cfg, preprocessed
from tests.test_predict import compose_predict, read_rows


def ops(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_int8_is_gated_on_the_test_split_and_runs_in_predict_and_evaluate(trained_run, tiny_data, tmp_path):
    ckpt = copy_run(trained_run, tmp_path / "run")
    # the tiny run's 2 test images would make one flip a 50-point drop: the limits here test the plumbing
    result = export(export_cfg(tmp_path, [f"ckpt={ckpt}", "format=onnx-int8", "max_recall_drop=1",
                                          "max_accuracy_drop=1"]))
    int8 = ckpt.with_name("best-int8.onnx")
    assert result["output"] == str(int8) and result["dense"] == [str(ckpt.with_name(f"best-int8.{n}.onnx")) for n in ("dense", "dense-head")]
    notes = result["int8"]
    assert notes["calibration_images"] == 2 and notes["test_images"] == 2, "the run's val and test splits"
    assert {"recall_drop", "accuracy_drop", "speedup"} <= set(notes) and notes["speedup"] > 0
    assert "QuantizeLinear" in ops(int8) and "Resize" in ops(int8)
    h, w = load_classifier(ckpt).card.preprocessing.input_size
    assert sum(tuple(i.dims) == (1, 3, h, w) for i in onnx.load(str(int8)).graph.initializer) == 2, \
        "mean and std spread to the input's shape (quantize.spread_normalisation)"
    assert not any("QuantizeLinear" in ops(d) for d in result["dense"]), "the dense graphs stay fp32"
    meta = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}
    assert meta["format"] == "onnx-int8" and meta["dense_graph"] == "best-int8.dense.onnx"
    assert meta["dense_head_graph"] == "best-int8.dense-head.onnx"
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["best-int8.dense-head.onnx", "best-int8.dense.onnx",
                                                              "best-int8.onnx", "best.ckpt"]

    backend, reference = OnnxBackend(int8), TorchBackend(load_classifier(ckpt))
    images = preprocessed(sorted(tiny_data.rglob("*.jpg")), backend.card.preprocessing)
    logits = backend.logits(images)
    with torch.no_grad():
        expected = reference.model(torch.from_numpy(images)).numpy()
    print(f"int8 vs fp32 logits on {len(images)} images: max |d| = {np.abs(logits - expected).max():.3g}")
    assert np.abs(logits - expected).max() <= 1e-3 + 0.05 * np.abs(expected).max(), "int8 rounds, it does not move"
    predict(compose_predict([f"ckpt={int8}", f"input={tiny_data}", f"output_dir={tmp_path / 'pred'}"]))
    rows = read_rows(tmp_path / "pred" / "predictions.csv")
    assert len(rows) == 24 and not any(r["error"] for r in rows)
    from crack_lightning.evaluation.evaluate import evaluate

    evaluate(compose_eval(tmp_path, [f"ckpt={int8}", f"data.root={tiny_data}"]))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test/images"] == 2, "the run's test split"


def test_int8_that_loses_recall_is_not_written(trained_run, tmp_path, caplog, monkeypatch):
    ckpt = copy_run(trained_run, tmp_path / "run")
    fp32_decisions = quantize.decisions
    monkeypatch.setattr(quantize, "decisions", lambda backend, pixels, batch=32: (
        np.zeros(len(pixels), np.float32) if backend.path.name.endswith(".int8.onnx") else fp32_decisions(backend, pixels, batch)))
    cfg = export_cfg(tmp_path, [f"ckpt={ckpt}", "format=onnx-int8"])
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(export)(cfg)
    assert exit_info.value.code == 2
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    message = record.getMessage()
    assert "best-int8.onnx not written" in message and "recall drops 1.0000 > max_recall_drop=0.005" in message
    assert "\n" not in message
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["best.ckpt"], "neither file, no partials"


def test_int8_without_the_runs_splits_is_refused(trained_run, tmp_path):
    ckpt = copy_run(trained_run, tmp_path / "run", splits=False)
    with pytest.raises(Exception, match=r"calibrates on the validation images .*splits.csv is missing"):
        export(export_cfg(tmp_path, [f"ckpt={ckpt}", "format=onnx-int8"]))
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["best.ckpt"]


def test_a_file_of_the_old_contract_still_predicts_and_evaluates(trained_run, tiny_data, tmp_path):
    """float32 NCHW preprocessed input, no dense graph: what export.py wrote before contract 2."""
    ckpt = copy_run(trained_run, tmp_path / "run")
    loaded = load_classifier(ckpt)
    h, w = loaded.card.preprocessing.input_size
    program = graph_program(_Probabilities(loaded.model.eval()), (torch.zeros(2, 3, h, w),), ["images"],
                            list(OUTPUTS), {"images": {0: torch.export.Dim("batch", min=1)}})
    old = {k: v for k, v in metadata(loaded, 18).items() if k not in ("contract_version", "format")}
    program.model.metadata_props.update(old)
    legacy = tmp_path / "old.onnx"
    program.save(legacy, external_data=False)

    backend = OnnxBackend(legacy)
    assert backend.legacy and backend.describe() == "contract 1, onnx"
    images = preprocessed(sorted(tiny_data.rglob("*.jpg")), backend.card.preprocessing)
    for got, expected in zip(backend.scores(images), TorchBackend(loaded).scores(images)):
        assert np.abs(got - expected).max() <= 1e-4
    with pytest.raises(DenseUnsupported, match="has no dense graph.*export again.*tile_mode=windows"):
        backend.dense_geometry()
    predict(compose_predict([f"ckpt={legacy}", f"input={tiny_data}", f"output_dir={tmp_path / 'pred'}", "tile=true"]))
    assert len(read_rows(tmp_path / "pred" / "predictions.csv")) == 24
    from crack_lightning.evaluation.scorers import open_scorer  # evaluate.py's model: the backend's logits

    scorer, _ = open_scorer(legacy)
    assert torch.equal(scorer(torch.from_numpy(images)), torch.from_numpy(backend.logits(images)))
