"""The records the scripts in benchmarks/ append to BENCHMARKS.md: what ran, on what, how."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import sys
from pathlib import Path

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


def append_record(out: str | Path, title: str | None, settings: str, body: list[str]) -> str:
    """Print one section and append it to ``out``: a heading with the date, ``title`` and
    the machine; the command line that produced it with ``settings``; then ``body`` (a
    Markdown table). Returns the section."""
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    heading = " — ".join(part for part in (f"{dt.datetime.now():%Y-%m-%d %H:%M}", title, describe_machine()) if part)
    section = "\n".join([f"## {heading}", "", f"`{command}` — {settings}", "", *body, ""])
    print("\n" + section)
    out = Path(out)
    head = "" if out.exists() else "# Benchmarks\n\nAppended by the scripts in benchmarks/; newest last.\n\n"
    with out.open("a") as f:
        f.write(head + section + "\n")
    return section
