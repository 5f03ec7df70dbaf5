"""Shared fixtures: a tiny synthetic dataset and Hydra configs composed like train.py does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from crack_lightning.data.synthetic.generate import generate

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# Tests never reach the network: a pretrained=true backbone must fail fast, not hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def ctrl_c_stays_live():
    """Lightning ignores SIGINT once it has caught a KeyboardInterrupt (trainer/call.py), and a
    child inherits an ignored SIGINT: after an in-process Ctrl+C test, every train.py this worker
    started was deaf to Ctrl+C (the startup Ctrl+C test then failed, depending on test order)."""
    yield
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """12 synthetic 227x227 images per class (a 19/2/3 split)."""
    root = tmp_path_factory.mktemp("tiny_data")
    generate(root, per_class=12, seed=0)
    return root


def compose_cfg(tmp_path: Path, data_root: Path, overrides: list[str] = ()) -> DictConfig:
    """The config `python train.py debug=fast <overrides>` would get, writing into tmp_path.

    ``debug=fast`` is left out when the overrides choose another ``debug``.
    """
    debug = [] if any(o.startswith(("debug=", "~debug")) for o in overrides) else ["debug=fast"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[
                *debug,
                "backbone.pretrained=false",
                f"data.root={data_root}",
                f"paths.data_dir={tmp_path / 'data'}",
                f"paths.log_dir={tmp_path / 'logs'}",
                f"paths.output_dir={tmp_path / 'run'}",
                *overrides,
            ],
        )


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` (links not followed): relative path -> (kind, size, sha256 or
    link target). Equal snapshots before and after a command: it changed, moved or deleted nothing."""
    import hashlib

    out = {}
    for path in sorted(Path(folder).rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir",)
        else:
            out[rel] = ("file", path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """The lines of a command's output that report an error."""
    return [line for line in (result.stdout + result.stderr).splitlines() if "ERROR" in line or "Error" in line]


def refused(result: subprocess.CompletedProcess, *words: str) -> str:
    """Assert a one-line refusal: exit 2, no traceback, torch's "weights_only=False" advice never
    relayed, exactly one error line, and it says ``words``; return that line."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output and "weights_only=False" not in output, output[-3000:]
    lines = error_lines(result)
    assert len(lines) == 1, output[-3000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# set in this process by an in-process DDP test (Lightning's fork launcher): a child given them
# would take that port, and two children side by side the same one (EADDRINUSE)
LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "GLOBAL_RANK")


def child_env() -> dict[str, str]:
    """The environment of a command a test runs: offline, unbuffered, no DDP launch variables."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    return {**env, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def run_py(script: str, args: list[str], cwd: Path = REPO, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run the real `python <script> ...` (train.py, predict.py, export.py) in a subprocess."""
    env = child_env()
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_train_py(args: list[str], cwd: Path = REPO, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run the real `python train.py ...` in a subprocess."""
    return run_py("train.py", args, cwd, timeout)


@pytest.fixture(scope="session")
def trained_run_result(tmp_path_factory, tiny_data) -> tuple[Path, float | None]:
    """One real tiny training run (custom_cnn, debug=fast): its folder and what train() returned."""
    from crack_lightning.train import train

    tmp = tmp_path_factory.mktemp("trained_run")
    best = train(compose_cfg(tmp, tiny_data, ["backbone=custom_cnn"]))
    return tmp / "run", best


@pytest.fixture(scope="session")
def trained_run(trained_run_result) -> Path:
    """The shared tiny run's folder (checkpoints/best.ckpt, metrics.json, figures), for
    the training, prediction, export and evaluation tests."""
    return trained_run_result[0]
