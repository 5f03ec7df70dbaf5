"""Sweeps through the real train.py: one folder per job, a failing job is recorded and the
others still run; summary.csv/.md/.png in the sweep folder, rebuilt identically by the
command; report.md in each run folder."""

from __future__ import annotations

import csv

import yaml

from crack_lightning.cli.sweep_summary import main
from tests.conftest import error_lines, run_train_py, snapshot
from tests.test_train import check_run_folder


def test_sweep_through_train_py_with_a_failing_job(tmp_path, tiny_data):
    """`python train.py -m` as a user types it -- no paths, no hydra.sweep.dir (Hydra 1.3
    resolves the sweep folder before ${hydra:runtime.cwd} is set; conf/paths uses ${cwd:}) --
    over two backbones and two learning rates, one of them refused."""
    result = run_train_py([
        "-m", "debug=fast", "backbone=custom_cnn,mobilenetv2", "backbone.pretrained=false", "model.lr=1e-3,-1",
        f"data.root={tiny_data}",
    ], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]  # a job failed: the sweep says so
    assert "Traceback" not in output
    [sweep] = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    assert (sweep / "multirun.yaml").is_file()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3"], "one folder per job"

    # the failing jobs did not stop the sweep: job 2 ran after job 1
    for failed in ("1", "3"):
        assert (sweep / failed / "error.txt").read_text().strip().startswith("Bad setting: model.lr=-1")
        assert not (sweep / failed / "metrics.json").exists() and not (sweep / failed / "report.md").exists()
    for job, backbone, name in (("0", "custom_cnn", "custom_cnn"), ("2", "mobilenetv2", "mobilenetv2_100")):
        check_run_folder(sweep / job)
        config = yaml.safe_load((sweep / job / ".hydra" / "config.yaml").read_text())
        overrides = yaml.safe_load((sweep / job / ".hydra" / "overrides.yaml").read_text())
        assert config["backbone"]["name"] == name and f"backbone={backbone}" in overrides
    # the same seed gives every job the same split, so their test numbers are comparable
    assert (sweep / "0" / "splits.csv").read_text() == (sweep / "2" / "splits.csv").read_text()

    with open(sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["completed", "completed", "failed", "failed"]
    assert [r["job"] for r in rows[2:]] == ["1", "3"]
    assert all("model.lr=-1" in r["overrides"] and "Bad setting" in r["error"] for r in rows[2:])
    best = [float(r["best val/loss"]) for r in rows[:2]]
    assert best == sorted(best), "best (lowest val/loss) first"
    for r in rows[:2]:
        assert r["overrides"].startswith("backbone=") and "data.root" not in r["overrides"], "only the swept overrides"
        assert 0 <= float(r["test/acc"]) <= 1 and "test/threshold" in r and r["epochs"] == "3"
        assert float(r["wall_time_s"]) > 0 and r["best_ckpt"].endswith("best.ckpt")
        assert float(r["images_per_sec"]) > 0  # the last epoch's train/images_per_sec
    md = (sweep / "summary.md").read_text()
    assert "2 failed" in md and "Bad setting: model.lr=-1" in md and "summary.png" in md
    acc = float(rows[0]["test/acc"])  # each metric with its 95 % interval
    assert f"{acc:.6g} [{float(rows[0]['test/acc_ci_low']):.3g}, {float(rows[0]['test/acc_ci_high']):.3g}]" in md
    assert (sweep / "summary.png").stat().st_size > 1000

    # the command (`python -m crack_lightning.cli.sweep_summary <dir>`) rebuilds the same
    # summary from the folder alone, and reports the failures too
    first = (sweep / "summary.csv").read_text()
    (sweep / "summary.csv").unlink()
    assert main([str(sweep)]) == 1
    assert (sweep / "summary.csv").read_text() == first

    # each successful run folder has a report naming its test metrics and figures
    report = (sweep / rows[0]["job"] / "report.md").read_text()
    for text in ("test/acc", "test/threshold", "test/missed_cracks_at_threshold",
                 "![Confusion matrix](confusion_matrix.png)"):
        assert text in report
    assert config["backbone"]["name"] in (sweep / "2" / "report.md").read_text()

    # a new sweep into this folder would summarise the old jobs under its own overrides
    # (issue 14, item 7): refused in one line before anything is written
    before = snapshot(sweep)
    again = run_train_py(["-m", "debug=fast", "backbone=custom_cnn", "backbone.pretrained=false", "model.lr=0.05",
                          f"data.root={tiny_data}", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr[-3000:]
    [line] = error_lines(again)
    assert f"hydra.sweep.dir={sweep} holds" in line
    assert snapshot(sweep) == before


def test_summary_sorts_by_monitor_mode_and_handles_jobs_without_results(tmp_path):
    """mode=max puts the highest first; a killed job (no result, no error) counts as a failure."""
    import json

    from crack_lightning.sweeps.summary import write_summary

    for job, auroc in (("0", 0.6), ("1", 0.9), ("2", None)):
        d = tmp_path / job
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
        (d / ".hydra" / "config.yaml").write_text("monitor: val/auroc\nmonitor_mode: max\n")
        if auroc is not None:
            (d / "csv").mkdir()
            (d / "csv" / "metrics.csv").write_text(
                "epoch,train/loss_epoch,val/auroc,val/loss\n"
                f"0,0.7,{auroc - 0.1},0.7\n1,0.6,{auroc},0.6\n2,,{auroc},0.6\n")
            (d / "metrics.json").write_text(json.dumps({"test/acc": auroc, "best_ckpt": ""}))
    jobs = write_summary(tmp_path)
    assert [j.job for j in jobs] == ["1", "0", "2"] and jobs[2].status == "incomplete"
    assert jobs[0].best == 0.9 and jobs[0].epochs == 2 and jobs[0].val_curve == [(0, 0.7), (1, 0.6)]
    assert (tmp_path / "summary.png").is_file()
    assert main([str(tmp_path)]) == 1
    assert main([str(tmp_path / "nope")]) == 2
    elsewhere = tmp_path / "not_a_sweep"  # a folder without job folders gets no summary files
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("mine\n")
    assert main([str(elsewhere)]) == 2 and sorted(p.name for p in elsewhere.iterdir()) == ["notes.txt"]
