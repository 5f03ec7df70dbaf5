"""One line that says what a benchmark ran on, for the records in BENCHMARKS.md."""

from __future__ import annotations

import os
import platform

import lightning as L
import torch


def describe_machine() -> str:
    """CPU model, usable cores, GPU (or "no GPU"), Python, torch and lightning versions."""
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {len(os.sched_getaffinity(0))} cores, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, lightning {L.__version__}")
