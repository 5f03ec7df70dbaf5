"""Work on every core: how many there are, a process pool that ends cleanly, one map over it.

Torch-free, so the data commands (validate, make data, the synthetic generator) use it
without importing torch. Every "serially or in a pool" loop of the project is
:func:`parallel_map`.

>>> list(parallel_map(abs, [-1, 2, -3], workers=1))
[1, 2, 3]
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
from typing import Callable, Iterable, Iterator, Sequence


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def auto_workers() -> int:
    """Loader workers for ``num_workers: auto``: one core left to the main process, at most 8."""
    return max(0, min(8, available_cores() - 1))


def resolve_workers(workers: int | None) -> int:
    """``None``: every available core; otherwise at least one."""
    return available_cores() if workers is None else max(1, int(workers))


def pool_context():
    # fork: workers inherit the parent's imports (spawn would re-import the package,
    # and with it Lightning, ~15 s per worker). Elsewhere only spawn is safe.
    return mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _reset_sigterm() -> None:
    # Pool.terminate() (the end of `with Pool()`) stops workers with SIGTERM. Under submitit
    # a forked worker inherits a handler that only logs SIGTERM: the job waited on its own pool.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def new_pool(workers: int):
    """A process pool of ``workers`` (see :func:`pool_context`) that ``terminate()`` can end."""
    return pool_context().Pool(workers, initializer=_reset_sigterm)


def chunksize(n: int, workers: int) -> int:
    """Jobs per message: big enough to amortise IPC, small enough that a slow chunk near the
    end does not leave the other cores idle for long."""
    return max(1, min(256, n // (workers * 8)))


def progress_bar(total: int, description: str, enabled: bool):
    """A rich progress bar (or a no-op) used as ``with ... as advance: advance(k)``."""
    if not enabled:
        return contextlib.nullcontext(lambda k=1: None)

    @contextlib.contextmanager
    def bar():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), transient=True) as prog:
            task = prog.add_task(description, total=total)
            yield lambda k=1: prog.advance(task, k)

    return bar()


def parallel_map(fn: Callable, jobs: Sequence, workers: int = 1, chunk: int | None = None,
                 progress: str | None = None, total: int | None = None,
                 weight: Callable[[object], int] | None = None) -> Iterator:
    """``fn(job)`` for every job, yielded in input order, on ``workers`` processes (this process
    when 1; ``fn`` must then be a module-level function: it is pickled).

    ``progress``: show a bar with this description, ``total`` steps (default: one per job), a
    result advancing it by ``weight(result)`` (default 1). The pool forks before the bar's thread
    starts: forking a process that runs threads can deadlock the children."""
    workers = max(1, min(int(workers), len(jobs)))
    count = weight or (lambda _result: 1)
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(new_pool(workers))
            results: Iterable = pool.imap(fn, jobs, chunksize=chunk or chunksize(len(jobs), workers))
        else:
            results = map(fn, jobs)
        advance = stack.enter_context(progress_bar(total or len(jobs), progress or "", bool(progress)))
        for result in results:
            yield result
            advance(count(result))
