"""Sweeps: a failing job is recorded and the others still run; summary.csv/.md/.png in
the sweep folder, rebuilt identically by the command; report.md in each run folder."""

from __future__ import annotations

import csv
import subprocess
import sys

from tests.conftest import REPO, run_train_py


def test_failing_job_is_recorded_and_the_sweep_summarised(tmp_path, tiny_data):
    sweep = tmp_path / "sweep"
    result = run_train_py([
        "-m", "debug=fast", "backbone=custom_cnn", "backbone.pretrained=false", "model.lr=1e-3,-1,1e-4",
        f"data.root={tiny_data}", f"paths.log_dir={tmp_path}", f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.sweep.dir={sweep}",
    ])
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]  # a job failed: the sweep says so
    assert "Traceback" not in output

    # the failing job did not stop the sweep: job 2 ran after it
    assert (sweep / "1" / "error.txt").read_text().strip().startswith("Bad setting: model.lr=-1")
    assert not (sweep / "1" / "metrics.json").exists()
    assert (sweep / "2" / "metrics.json").is_file()

    with open(sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["completed", "completed", "failed"]
    assert rows[2]["job"] == "1" and "model.lr=-1" in rows[2]["overrides"] and "Bad setting" in rows[2]["error"]
    best = [float(r["best val/loss"]) for r in rows[:2]]
    assert best == sorted(best), "best (lowest val/loss) first"
    for r in rows[:2]:
        assert r["overrides"].startswith("model.lr=") and "data.root" not in r["overrides"], "only the swept overrides"
        assert 0 <= float(r["test/acc"]) <= 1 and "test/threshold" in r and r["epochs"] == "3"
        assert float(r["wall_time_s"]) > 0 and r["best_ckpt"].endswith("best.ckpt")
        assert float(r["images_per_sec"]) > 0  # the last epoch's train/images_per_sec
    md = (sweep / "summary.md").read_text()
    assert "1 failed" in md and "Bad setting: model.lr=-1" in md and "summary.png" in md
    assert (sweep / "summary.png").stat().st_size > 1000

    # the command rebuilds the same summary from the folder alone
    first = (sweep / "summary.csv").read_text()
    (sweep / "summary.csv").unlink()
    rebuild = subprocess.run([sys.executable, "-m", "crack_lightning.sweeps.summary", str(sweep)],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert rebuild.returncode == 1, rebuild.stdout + rebuild.stderr  # it reports the failure too
    assert (sweep / "summary.csv").read_text() == first

    # each successful run folder has a report naming its test metrics and figures
    report = (sweep / rows[0]["job"] / "report.md").read_text()
    for text in ("custom_cnn", "test/acc", "test/threshold", "test/missed_cracks_at_threshold",
                 "![Confusion matrix](confusion_matrix.png)"):
        assert text in report
    assert not (sweep / "1" / "report.md").exists()


def test_summary_sorts_by_monitor_mode_and_handles_jobs_without_results(tmp_path):
    """mode=max puts the highest first; a killed job (no result, no error) counts as a failure."""
    import json

    from crack_lightning.sweeps.summary import main, write_summary

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
