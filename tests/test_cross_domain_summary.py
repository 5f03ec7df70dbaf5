"""Several test sets from one training run (eval.test_sets): the "Across domains" table of
report.md, the cross-domain matrix of summary.md and cross_domain.png -- from fake run folders,
so no training (metrics.json as train.py writes it: flat floats, "best_ckpt" and "train_domain")."""

from __future__ import annotations

import csv
import re
import json

import pytest
from omegaconf import OmegaConf
from PIL import Image

from crack_lightning.cli.sweep_summary import main
from crack_lightning.reports.run_report import run_report
from crack_lightning.sweeps.cross_domain import cross_domain_figure, matrices, with_interval
from crack_lightning.sweeps.summary import collect_jobs, write_summary

DOMAINS = ("asphalt", "bridge", "concrete")
BACKBONES = {"resnet18": 0.0, "custom_cnn": -0.2}  # what each backbone takes off recall
PNG = b"\x89PNG\r\n\x1a\n"


def recall(train: str, test: str, backbone: str = "resnet18") -> float:
    """A distinct recall for every (train, test, backbone): in-domain best."""
    base = 0.9 if train == test else 0.5 + 0.1 * DOMAINS.index(train) + 0.01 * (DOMAINS + ("site_b",)).index(test)
    return round(base + BACKBONES[backbone], 4)


def with_intervals(prefix: str, r: float, images: int) -> dict[str, float]:
    metrics = {"images": float(images), "acc": r, "auroc": r + 0.05, "recall_at_threshold": r,
               "precision_at_threshold": r - 0.1, "f1_at_threshold": r - 0.05, "missed_cracks_at_threshold": 3.0}
    for key in ("recall_at_threshold", "f1_at_threshold", "auroc", "missed_cracks_at_threshold"):
        metrics[f"{key}_ci_low"], metrics[f"{key}_ci_high"] = metrics[key] - 0.04, metrics[key] + 0.03
    return {f"{prefix}{k}": v for k, v in metrics.items()}


def run_metrics(train: str | None, test_sets: dict[str, float], own: float, backbone_name: str = "") -> dict:
    """metrics.json of a run trained on ``train`` (None: no train_domain) tested on ``test_sets``."""
    metrics = with_intervals("test/", own, 40)
    metrics["test/loss"], metrics["test/threshold"] = 0.3, 0.4
    for name, r in test_sets.items():
        metrics.update(with_intervals(f"test_sets/{name}/", r, 25))
    if train is not None:
        metrics["train_domain"] = train
    metrics["best_ckpt"] = f"checkpoints/{backbone_name or 'best'}.ckpt"
    return dict(sorted(metrics.items()))


def fake_job(folder, overrides: list[str], metrics: dict, val_loss: float) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / ".hydra" / "config.yaml").write_text("monitor: val/loss\nmonitor_mode: min\n")
    (folder / "csv").mkdir()
    (folder / "csv" / "metrics.csv").write_text(
        f"epoch,train/loss_epoch,val/loss\n0,0.8,{val_loss + 0.1}\n1,0.6,{val_loss}\n")
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def fake_sweep(sweep, test_sets: bool = True, backbones=tuple(BACKBONES)):
    """A data x backbone sweep; each run is tested on the other domains and site_b."""
    job = 0
    for backbone in backbones:
        for train in DOMAINS:
            sets = {t: recall(train, t, backbone) for t in (*DOMAINS, "site_b") if t != train} if test_sets else {}
            metrics = run_metrics(train if test_sets else None, sets, recall(train, train, backbone), backbone)
            fake_job(sweep / str(job), [f"data.root=/data/{train}", f"backbone={backbone}", "trainer.max_epochs=2"],
                     metrics, val_loss=0.2 + 0.01 * job)
            job += 1
    return sweep


def table(md: str, after: str) -> dict[str, dict[str, str]]:
    """The Markdown table after the line ``after``: {row label's first word: {column: cell}}."""
    lines = md.splitlines()
    start = lines.index(after) + 2
    header = [c.strip() for c in lines[start].strip("|").split(" | ")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        rows[cells[0].split(" ")[0]] = dict(zip(header[1:], cells[1:]))
    return rows


def cell(r: float) -> str:  # summary.md's value [interval]
    return f"{r:.6g} [{r - 0.04:.3g}, {r + 0.03:.3g}]"


def test_report_has_an_across_domains_table(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    metrics = run_metrics("concrete", {"site_b": 0.61, "asphalt": 0.72}, own=0.9)
    (run / "metrics.json").write_text(json.dumps(metrics))
    report = run_report(OmegaConf.create({}), run)  # the string train_domain is no metric: no crash

    before, across = report.split("## Across domains")
    assert "test_sets/" not in before and "train_domain" not in before, "test sets are no test/* metric"
    assert "| test/auroc | 0.95 | [0.91, 0.98] |" in before  # the test metrics as before
    assert "Trained on `concrete`" in across and "95 % intervals in brackets" in across
    rows = [line for line in across.splitlines() if line.startswith("| ")]
    assert rows[0] == ("| train domain -> test domain | images | recall at threshold | precision at threshold | "
                       "F1 at threshold | AUROC | missed cracks at threshold |")
    assert rows[1] == ("| concrete -> concrete (own test split) | 40 | 0.9 [0.86, 0.93] | 0.8 | 0.85 [0.81, 0.88] "
                       "| 0.95 [0.91, 0.98] | 3 [2.96, 3.03] |")
    assert rows[2].startswith("| concrete -> asphalt | 25 | 0.72 [0.68, 0.75] | 0.62 |")
    assert rows[3].startswith("| concrete -> site_b | 25 | 0.61 [0.57, 0.64] |")  # own first, then by name
    assert len(rows) == 4
    (run / "test_sets" / "site_b").mkdir(parents=True)  # what eval.test_sets writes: linked
    assert "| concrete -> [site_b](test_sets/site_b/) | 25 |" in run_report(OmegaConf.create({}), run)

    del metrics["train_domain"]  # no train_domain: the own test split is "in-domain"
    (run / "metrics.json").write_text(json.dumps(metrics))
    report = run_report(OmegaConf.create({}), run)
    assert "| training data -> in-domain (own test split) | 40 | 0.9 [0.86, 0.93] |" in report
    assert "| training data -> [site_b](test_sets/site_b/) | 25 |" in report

    (run / "metrics.json").write_text(json.dumps(run_metrics("concrete", {}, own=0.9)))
    assert "Across domains" not in run_report(OmegaConf.create({}), run)  # no test sets: no section


def test_sweep_gets_one_cross_domain_matrix_per_backbone(tmp_path):
    sweep = fake_sweep(tmp_path / "sweep")
    jobs = write_summary(sweep)
    assert {j.train_domain for j in jobs} == set(DOMAINS)
    md = (sweep / "summary.md").read_text()
    assert "## Cross-domain matrix" in md and "![cross-domain recall at threshold](cross_domain.png)" in md
    assert md.index("![summary](summary.png)") < md.index("## Cross-domain matrix")

    columns = [*DOMAINS, "site_b"]  # the train domains (the diagonal), then the other test sets
    for backbone, first_job in (("resnet18", 0), ("custom_cnn", 3)):
        section = md.split(f"### `backbone={backbone}`")[1].split("###")[0]
        recall_rows, f1_rows = table(section, "Recall at threshold:"), table(section, "F1 at threshold:")
        assert list(recall_rows) == list(DOMAINS) and list(recall_rows["asphalt"]) == columns
        for i, train in enumerate(DOMAINS):
            for test in columns:
                assert recall_rows[train][test] == cell(recall(train, test, backbone)), (backbone, train, test)
                assert f1_rows[train][test] == cell(round(recall(train, test, backbone) - 0.05, 4))
            assert f"| {train} (job [{first_job + i}]({first_job + i}/)) |" in section
    assert not re.search(r"\(n=\d", md)  # one job per cell
    assert cell(0.9) in table(md.split("### `backbone=resnet18`")[1], "Recall at threshold:")["bridge"]["bridge"]

    png = (sweep / "cross_domain.png").read_bytes()
    assert png.startswith(PNG) and len(png) > 5000
    with Image.open(sweep / "cross_domain.png") as image:
        image.verify()
    fig = cross_domain_figure(collect_jobs(sweep))
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert f"{recall('bridge', 'site_b'):.3g}\n[{recall('bridge', 'site_b') - 0.04:.3g}, " \
           f"{recall('bridge', 'site_b') + 0.03:.3g}]" in texts
    assert [ax.get_title() for ax in fig.axes[:2]] == ["backbone=resnet18", "backbone=custom_cnn"]

    with open(sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["train_domain"] for r in rows} == set(DOMAINS)
    concrete = next(r for r in rows if r["overrides"] == "data.root=/data/concrete backbone=resnet18")
    assert float(concrete["test_sets/site_b/recall_at_threshold"]) == recall("concrete", "site_b")
    assert concrete["test_sets/concrete/recall_at_threshold"] == ""  # not tested on its own domain as a set

    # the command rebuilds the same files from the folder alone
    first_md, first_csv = md, (sweep / "summary.csv").read_text()
    for name in ("summary.md", "summary.csv", "cross_domain.png"):
        (sweep / name).unlink()
    assert main([str(sweep)]) == 0
    assert (sweep / "summary.md").read_text() == first_md and (sweep / "summary.csv").read_text() == first_csv
    assert (sweep / "cross_domain.png").read_bytes().startswith(PNG)


def test_without_test_sets_the_summary_is_as_before(tmp_path):
    with_sets = fake_sweep(tmp_path / "with")
    plain = fake_sweep(tmp_path / "plain", test_sets=False)
    write_summary(with_sets)
    write_summary(plain)
    md, plain_md = (with_sets / "summary.md").read_text(), (plain / "summary.md").read_text()
    assert "Cross-domain" not in plain_md and not (plain / "cross_domain.png").exists()
    assert "across domains" not in plain_md.lower()
    # everything else is the same: the job table, and summary.csv without the new columns
    assert md.startswith(plain_md.replace("# Sweep summary: plain", "# Sweep summary: with"))
    assert plain_md.endswith("![summary](summary.png)\n")
    with open(plain / "summary.csv", newline="") as f:
        plain_rows = list(csv.DictReader(f))
    with open(with_sets / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(plain_rows[0])[:5] == ["rank", "job", "status", "overrides", "best val/loss"]
    assert list(plain_rows[0])[-5:] == ["epochs", "wall_time_s", "images_per_sec", "best_ckpt", "error"]
    assert not any(k.startswith("test_sets/") or k == "train_domain" for k in plain_rows[0])
    new = {k for k in rows[0] if k.startswith("test_sets/") or k == "train_domain"}
    assert [{k: v for k, v in r.items() if k not in new} for r in rows] == plain_rows


def test_jobs_of_the_same_overrides_share_a_cell_as_their_mean(tmp_path):
    """Two runs of one configuration (nested folders, the same overrides): one matrix, mean (n=2)."""
    sweep = tmp_path / "sweep"
    for folder, own, site_b in (("a/0", 0.9, 0.6), ("b/0", 0.8, 0.5), ("a/1", 0.7, 0.4)):
        train = "asphalt" if folder == "a/1" else "concrete"
        fake_job(sweep / folder, [f"data=/data/{train}"], run_metrics(train, {"site_b": site_b}, own), 0.3)
    write_summary(sweep)
    [matrix] = matrices(collect_jobs(sweep))
    assert matrix.rows == ["asphalt", "concrete"] and matrix.columns == ["asphalt", "concrete", "site_b"]
    md = (sweep / "summary.md").read_text()
    assert "###" not in md.split("## Cross-domain matrix")[1]  # nothing splits the jobs
    rows = table(md, "Recall at threshold:")
    assert rows["concrete"]["concrete"] == f"{0.85:.6g} (n=2)" and rows["concrete"]["site_b"] == f"{0.55:.6g} (n=2)"
    assert rows["concrete"]["asphalt"] == "" and rows["asphalt"]["asphalt"] == cell(0.7)
    assert "| concrete (jobs [a/0](a/0/), [b/0](b/0/)) |" in md


def test_matrix_cells_read_like_the_job_table():
    """cross_domain.py cannot import summary.py's helper (summary.py imports it): the same format."""
    from crack_lightning.sweeps.summary import _with_interval

    for metrics in ({"m": 0.912345678, "m_ci_low": 0.87123, "m_ci_high": 0.95}, {"m": 0.5},
                    {"m": 12.0, "m_ci_low": 9.5, "m_ci_high": 14.25}, {"m": 1e-7, "m_ci_low": 0.0, "m_ci_high": 1.0}):
        assert with_interval(metrics, "m") == _with_interval(metrics, "m"), metrics


@pytest.mark.parametrize("bad", ["not-a-number", None])
def test_odd_values_do_not_break_the_summary(tmp_path, bad):
    """A string or null among the test-set metrics is left out, like any value that is no number."""
    sweep = tmp_path / "sweep"
    metrics = run_metrics("concrete", {"site_b": 0.6}, 0.9)
    metrics["test_sets/site_b/recall_at_threshold_ci_low"] = bad
    fake_job(sweep / "0", ["data=/data/concrete"], metrics, 0.3)
    write_summary(sweep)
    assert "| concrete (job [0](0/)) | 0.9 [0.86, 0.93] | 0.6 |" in (sweep / "summary.md").read_text()
