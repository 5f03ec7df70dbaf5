"""The torch.profiler callback of ``gpu_check.py profile`` (benchmarks/gpu_check.sh, docs/gpu.md).

:func:`step_profiler` is the callback a short fit gets (``callbacks.step_profiler``): a few timed
training steps, then a few with Python stacks (apart: the stack tracer slows every step), into one
text report -- wall and device time per step, kernel launches, the host syncs and the code lines
behind them, the ``key_averages`` tables -- and, when asked, a gzipped Chrome trace.
"""

from __future__ import annotations

import datetime as dt
import gzip
import shutil
import tempfile
import time
from pathlib import Path

# the host syncs the profile counts per step; the CUDA runtime's calls carry no Python stack, so the
# stacks come from the ops that wait for the device: a tensor read into Python (item, isfinite's bool), nonzero
SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
               "aten::_local_scalar_dense", "aten::nonzero")
STACK_EVENTS = ("aten::_local_scalar_dense", "aten::nonzero")

STACK_STEPS = 2  # the second window, with Python stacks: the stack tracer slows every step many times over


def step_profiler(out: str, trace: str | None, wait: int, active: int):
    """A callback that profiles ``active`` training steps after ``wait`` (+2 for the profiler's own
    warm-up) and writes where the time goes: per-step totals, host syncs, the busiest device and host
    operations; then profiles STACK_STEPS more with Python stacks, for the lines that cause the syncs
    (apart, since the stack tracer's cost would swamp the first window's timings). A factory, for the
    same reason as :func:`settings_probe`."""
    import lightning as L
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])

    def sync():
        if cuda:
            torch.cuda.synchronize()

    class StepProfiler(L.Callback):
        def __init__(self):
            self.step, self.start, self.settings, self.text = 0, None, {}, None
            self.phase = "timing"  # then "switch", "stacks", "done"
            self.timing = profile(activities=activities, schedule=schedule(wait=wait, warmup=2, active=active),
                                  on_trace_ready=self._timed)
            self.stacks = profile(activities=activities, schedule=schedule(wait=0, warmup=1, active=STACK_STEPS),
                                  on_trace_ready=self._stacked, with_stack=True, **_verbose_stacks(torch))

        def on_train_start(self, trainer, pl_module):
            self.settings = {"precision": str(trainer.precision), "cudnn.benchmark": torch.backends.cudnn.benchmark,
                             "float32 matmul": torch.get_float32_matmul_precision(),
                             "cache on the device": getattr(trainer.datamodule, "resident", None) is not None}
            self.timing.start()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self.step == wait + 2:  # the first active step: one sync to start the clock
                self.settings["batch arrives channels_last"] = batch[0].is_contiguous(memory_format=torch.channels_last)
                sync()
                self.start = time.perf_counter()
            if self.phase == "switch":  # one profiler at a time: the first is stopped outside its own callback
                self.timing.stop()
                self.stacks.start()
                self.phase = "stacks"

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.step += 1
            if self.phase in ("timing", "stacks"):
                (self.timing if self.phase == "timing" else self.stacks).step()

        def on_train_end(self, trainer, pl_module):
            if self.phase in ("timing", "switch"):
                self.timing.stop()
            elif self.phase == "stacks":
                self.stacks.stop()
            if self.text is None:
                self.text = (f"The profile saw {self.step} steps, too few for {wait} + 2 warm-up + {active}: "
                             f"nothing to report.\n")
            Path(out).write_text(self.text)

        def _timed(self, prof):
            sync()
            wall = time.perf_counter() - self.start
            self.text = _timing_report(prof, wall, active, self.settings, cuda)
            Path(out).write_text(self.text)
            if trace:
                raw = Path(tempfile.mkdtemp()) / "trace.json"  # not in the output folder: it can exceed 16 MiB
                prof.export_chrome_trace(str(raw))
                with open(raw, "rb") as src, gzip.open(trace, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                shutil.rmtree(raw.parent)
                if Path(trace).stat().st_size > 15 * 2**20:  # the device tool returns files up to 16 MiB
                    Path(trace).unlink()
            self.phase = "switch"

        def _stacked(self, prof):
            self.text += _stack_report(prof, STACK_STEPS)
            self.phase = "done"

    return StepProfiler()


def _verbose_stacks(torch) -> dict:
    """Without Kineto's verbose mode the ops' Python stacks come back empty (torch 2.x)."""
    config = getattr(getattr(torch._C, "_profiler", None), "_ExperimentalConfig", None)
    return {"experimental_config": config(verbose=True)} if config else {}


def _timing_report(prof, wall_s: float, steps: int, settings: dict, cuda: bool) -> str:
    """The first window as text: per-step wall, device busy time, launches and host syncs, then
    key_averages by device and by host time."""
    averages = prof.key_averages()
    kernels = [a for a in averages if str(a.device_type).endswith("CUDA")]
    device_us = sum(a.self_device_time_total for a in kernels) if cuda else 0.0
    launches = sum(a.count for a in averages if a.key.startswith(("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch")))
    syncs = {key: sum(a.count for a in averages if a.key == key) / steps for key in SYNC_EVENTS}
    busy = (f"device busy {device_us / 1000 / steps:.1f} ms ({100 * device_us / 1e6 / wall_s:.0f} % of the wall)"
            if cuda else "no GPU (dry run)")
    lines = [f"torch.profiler over {steps} training steps (finetune=full from the first step: the unfrozen phase), "
             f"{dt.datetime.now():%Y-%m-%d %H:%M}",
             "settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()),
             f"summary: per step {1000 * wall_s / steps:.1f} ms wall (profiled), {busy}, {launches / steps:.0f} kernel "
             f"launches, {syncs['cudaStreamSynchronize'] + syncs['cudaDeviceSynchronize']:.0f} stream/device syncs, "
             f"{syncs['aten::_local_scalar_dense']:.0f} tensor-to-Python reads", "",
             "Host syncs per step (each stops the host until the GPU catches up; where from: at the end):"]
    lines += [f"  {key}: {n:.1f} per step" for key, n in syncs.items()]
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    lines += ["", f"key_averages by {sort}:", averages.table(sort_by=sort, row_limit=35, max_name_column_width=60)]
    if cuda:
        lines += ["", "key_averages by self_cpu_time_total (the host's side):",
                  averages.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60)]
    return "\n".join(lines) + "\n"


def _stack_report(prof, steps: int) -> str:
    """The second window: the Python lines behind each op that waits for the device."""
    lines = ["", f"Where the host syncs come from ({steps} more steps, with Python stacks; innermost frame first):"]
    for a in sorted((a for a in prof.key_averages(group_by_stack_n=10) if a.key in STACK_EVENTS),
                    key=lambda a: -a.count)[:20]:
        frames = [f for f in a.stack if "torch/profiler" not in f and not f.startswith("<built-in")][:8]
        lines.append(f"  {a.count / steps:6.1f}/step {a.key} at " + "  <-  ".join(frames))
    return "\n".join(lines) + "\n"
