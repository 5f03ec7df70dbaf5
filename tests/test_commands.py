"""Every command runs from any working directory: the console scripts, their ``python -m`` forms and
the entry scripts, started from a folder that is not the checkout (where ``crack-data`` once failed
with "Primary config module 'conf' not found")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

BIN = Path(sys.executable).parent
# console script -> its module (pyproject.toml's [project.scripts])
SCRIPTS = {
    "crack-data": "crack_lightning.cli.data",
    "crack-validate": "crack_lightning.cli.validate",
    "crack-synth": "crack_lightning.cli.synth",
    "crack-sweep-summary": "crack_lightning.cli.sweep_summary",
}


def _run(argv: list, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_every_console_script_is_installed_and_declared():
    import tomllib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {name: target.split(":")[0] for name, target in declared.items()} == SCRIPTS
    assert all((BIN / name).is_file() for name in SCRIPTS), "make install puts them in the venv"


@pytest.mark.parametrize("form", ["script", "module"])
def test_the_commands_work_from_another_folder(tmp_path, form):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def command(name: str) -> list:
        return [BIN / name] if form == "script" else [sys.executable, "-m", SCRIPTS[name]]

    for name in SCRIPTS:
        result = _run([*command(name), "--help"], elsewhere)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (name, result.stderr)

    # Real work, relative paths taken from the working directory.
    made = _run([*command("crack-synth"), "--out", "ds", "--per-class", "3", "--size", "48"], elsewhere)
    assert made.returncode == 0 and (elsewhere / "ds" / "Positive" / "00003.jpg").is_file(), made.stderr
    checked = _run([*command("crack-validate"), "ds", "--workers", "1"], elsewhere)
    assert checked.returncode in (0, 1) and "images checked" in checked.stdout, checked.stdout + checked.stderr
    # crack-data composes conf/ (found from anywhere); the data root comes from this folder
    cfg = _run([*command("crack-data"), "--cfg", "job", "--resolve"], elsewhere)
    assert cfg.returncode == 0 and f"root: {elsewhere}/data/concrete_crack" in cfg.stdout, cfg.stderr
    missing = _run([*command("crack-sweep-summary"), "no_sweep"], elsewhere)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no_sweep" in missing.stderr
    assert sorted(p.name for p in elsewhere.iterdir()) == ["ds"], "nothing written into the working folder"


def test_the_entry_scripts_work_from_another_folder(tmp_path):
    for script, key in (("train.py", "task_name: train"), ("predict.py", "task_name: predict"),
                        ("export.py", "task_name: export")):
        result = _run([sys.executable, REPO / script, "--cfg", "job"], tmp_path)
        assert result.returncode == 0 and key in result.stdout, (script, result.stderr)
