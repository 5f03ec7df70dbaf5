"""evaluate.py and recalibrate.py: any model file on any labelled set, the images only read, the
site's operating point stored beside the model's own and read back by predict.py."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from hydra import compose, initialize_config_dir

from tests.conftest import CONF, refused, run_py, snapshot
from crack_lightning import CrackLightningError
from crack_lightning.utils.files import sha256_file

FIGURES = ("classification_report.txt", "confusion_matrix.png", "pr_roc_curves.png", "reliability_diagram.png",
           "errors.png", "report.md", "intervals.json", "metrics.json", "splits.csv")


def _numbers(metrics: dict) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, float)}


@pytest.fixture(scope="module")
def model_files(trained_run, tmp_path_factory) -> tuple[Path, Path]:
    """A copy of the shared run's best.ckpt and its ONNX export (export_onnx, as export.py writes it)."""
    from crack_lightning.export.onnx import export_onnx
    from crack_lightning.inference.checkpoint import load_classifier

    tmp = tmp_path_factory.mktemp("model_files")
    ckpt = tmp / "best.ckpt"
    shutil.copy(trained_run / "checkpoints" / "best.ckpt", ckpt)
    export_onnx(load_classifier(ckpt), tmp / "best.onnx")
    return ckpt, tmp / "best.onnx"


def _evaluate(args: list[str], run_dir: Path, script: str = "evaluate.py"):
    return run_py(script, [*args, f"hydra.run.dir={run_dir}", f"paths.data_dir={run_dir.parent / 'data'}"])


def test_a_checkpoint_on_a_folder_and_its_onnx_on_a_manifest_agree(model_files, tiny_data, tmp_path):
    """The same images as a folder (Negative/ Positive/) and as a manifest naming the classes
    otherwise (intact / crack): the .ckpt and the .onnx give the same metrics within 1e-4, every
    report file is written, and the images are only read."""
    ckpt, onnx_file = model_files
    manifest = tmp_path / "table" / "site.csv"  # (a run folder inside the manifest's folder is refused)
    manifest.parent.mkdir()
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for path in sorted(tiny_data.rglob("*.jpg")):
            writer.writerow([path, "crack" if path.parent.name == "Positive" else "intact"])
    before = snapshot(tiny_data)
    folder_run, manifest_run = tmp_path / "folder", tmp_path / "manifest"
    proc = _evaluate([f"ckpt={ckpt}", f"data.root={tiny_data}"], folder_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from crack_lightning.evaluation.evaluate import evaluate  # the entry itself is run just above

    evaluate(compose_eval(tmp_path, [f"ckpt={onnx_file}", f"data.manifest={manifest}", "data.positive_classes=[crack]",
                                     f"paths.output_dir={manifest_run}"]))
    assert snapshot(tiny_data) == before, "evaluate.py changed the images it read"
    for run in (folder_run, manifest_run):
        assert all((run / name).is_file() for name in FIGURES), sorted(p.name for p in run.iterdir())
    folder, table = (json.loads((run / "metrics.json").read_text()) for run in (folder_run, manifest_run))
    assert folder["test/images"] == 24 and folder["ckpt"] == str(ckpt) and table["ckpt"] == str(onnx_file)
    assert {"test/recall_at_threshold", "test/recall", "test/recall_at_threshold_ci_low", "test/threshold"} <= set(folder)
    assert _numbers(folder).keys() == _numbers(table).keys()
    worst = max(abs(folder[k] - table[k]) for k in _numbers(folder))
    assert worst <= 1e-4, {k: (folder[k], table[k]) for k in _numbers(folder) if abs(folder[k] - table[k]) > 1e-4}
    assert (folder_run / "gradcam.png").is_file() and not (manifest_run / "gradcam.png").exists()  # ONNX: no layers


def test_recalibrate_stores_a_named_point_and_predict_reads_it(model_files, tiny_data, tmp_path):
    """A copy of the model with the point ``site_b`` (the original byte for byte unchanged), the
    too-few-cracks warning on a 12-crack sample, and predict.py / evaluate.py at that point."""
    from crack_lightning.inference.checkpoint import read_checkpoint

    ckpt, onnx_file = model_files
    original = sha256_file(ckpt)
    run = tmp_path / "recal"
    proc = _evaluate([f"ckpt={ckpt}", f"data.root={tiny_data}", "name=site_b", "eval.target_recall=0.95"], run,
                     script="recalibrate.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sha256_file(ckpt) == original, "recalibrate.py modified the model it read"
    said = proc.stdout + proc.stderr
    assert "only 12 cracks" in said and "fewer than 73 cracks" in said, said[-3000:]  # 95 % sure of 0.95
    result = json.loads((run / "recalibration.json").read_text())
    new = Path(result["model"])
    assert new.parent == run and new.name == "best-site_b.ckpt"
    assert result["images"] == 24 and result["cracks"] == 12 and any("only 12 cracks" in w for w in result["warnings"])
    for side in ("before", "after"):
        low, high = result[side]["recall_ci"]
        assert low <= result[side]["recall"] <= high
    assert result["after"]["recall"] >= 0.95, "the refitted threshold reaches the target on its own images"
    stored = read_checkpoint(new)["crack_lightning"]
    point = stored["operating_points"]["site_b"]
    assert point["threshold"] == result["after"]["threshold"] and point["split"] == "site"
    assert torch.load(new, weights_only=True)["state_dict"]["threshold"] == torch.load(ckpt, weights_only=True)[
        "state_dict"]["threshold"], "the model's own operating point stays its default"

    from crack_lightning.inference.predict import predict

    out = tmp_path / "pred"
    predict(compose_eval(tmp_path, [f"ckpt={new}", f"input={tiny_data}", "operating_point=site_b", f"output_dir={out}",
                                    "num_workers=0"], "predict"))
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert rows and all(float(r["threshold"]) == pytest.approx(point["threshold"], abs=1e-8) for r in rows)


def test_recalibrate_an_onnx_file_into_a_new_onnx_file(model_files, tiny_data, tmp_path):
    from crack_lightning.inference.onnx_backend import OnnxBackend

    _, onnx_file = model_files
    original = sha256_file(onnx_file)
    from crack_lightning.evaluation.recalibrate import recalibrate

    result = recalibrate(compose_eval(tmp_path, [f"ckpt={onnx_file}", f"data.root={tiny_data}", "name=site_b",
                                                 "eval.calibrate=false"], "recalibrate"))
    assert sha256_file(onnx_file) == original
    assert json.loads((tmp_path / "run" / "recalibration.json").read_text()) == json.loads(json.dumps(result))
    backend = OnnxBackend(result["model"], operating_point="site_b")
    assert backend.card.threshold == result["after"]["threshold"]
    assert OnnxBackend(result["model"]).card.threshold == OnnxBackend(onnx_file).card.threshold
    # whole photos: the copy brings its own dense graphs, beside it in the new run folder
    from crack_lightning.inference.model_files import dense_paths

    for dense in dense_paths(result["model"]):
        assert dense.is_file() and dense.parent != Path(onnx_file).parent
    assert backend.dense_geometry() == OnnxBackend(onnx_file).dense_geometry()


def compose_eval(tmp_path: Path, overrides: list[str], config: str = "evaluate"):
    """evaluate.py's (or recalibrate.py's) config, writing into tmp_path/run."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config, overrides=[f"paths.output_dir={tmp_path / 'run'}",
                                                      f"paths.data_dir={tmp_path / 'data'}", *overrides])


def test_bad_settings_and_sets_are_refused_in_one_line(model_files, tiny_data, tmp_path):
    from crack_lightning.evaluation.evaluate import evaluate
    from crack_lightning.evaluation.recalibrate import recalibrate
    from crack_lightning.inference.predict import predict

    ckpt, _ = model_files
    refused(_evaluate([f"data.root={tiny_data}"], tmp_path / "a"), "ckpt= is required")  # the entry, end to end
    cases = [
        (evaluate, "evaluate", [f"ckpt={ckpt}", f"data.root={tmp_path / 'nowhere'}"], "nowhere"),
        (evaluate, "evaluate", [f"ckpt={ckpt}", f"data.root={tiny_data}", "operating_point=site_c"],
         "operating_point=site_c: the model has no operating point of that name"),
        (recalibrate, "recalibrate", [f"ckpt={ckpt}", f"data.root={tiny_data}", "name=a/b"], "name=a/b"),
        (evaluate, "evaluate", [f"ckpt={ckpt}", f"data.root={tiny_data}", f"eval.test_sets={{b: {tmp_path / 'none'}}}"],
         f"eval.test_sets.b={tmp_path / 'none'}: no such folder or file"),
        (predict, "predict", [f"ckpt={ckpt}", f"input={tiny_data}", "operating_point=x", "output_dir=" + str(tmp_path)],
         "operating_point=x"),
    ]
    three = tmp_path / "three"  # the model knows Negative / Positive
    for name in ("crack", "stain", "clean"):
        (three / name).mkdir(parents=True)
        shutil.copy(next((tiny_data / "Positive").glob("*.jpg")), three / name / "a.jpg")
    cases.append((evaluate, "evaluate", [f"ckpt={ckpt}", f"data.root={three}"], "are not the model's"))
    for run, config, overrides, message in cases:
        with pytest.raises(CrackLightningError) as refusal:
            run(compose_eval(tmp_path, overrides, config))
        assert message in str(refusal.value) and "\n" not in str(refusal.value), refusal.value
