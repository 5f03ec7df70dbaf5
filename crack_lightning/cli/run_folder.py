"""A run folder belongs to one run, and nothing we write lands in the data we read.

:class:`OwnFolders` is a Hydra callback (``hydra.callbacks.own_folders`` in ``conf/train.yaml``,
``predict.yaml``, ``export.yaml``). It runs before Hydra creates the run folder or writes its
``.hydra/``, and refuses, in one line and with exit status 2:

- a run folder that already holds files (another run's: its checkpoints would be restored,
  its logs cut, its config overwritten), unless the command is ``resume=<that folder>``;
- a sweep folder that already holds files (its old jobs would be summarised as new ones);
- a run, sweep, cache or output folder inside the data the command reads (``data.root``, the
  folder of ``data.manifest``, ``input``), or a data folder inside the run folder;
- a folder it must write into but cannot create or write (checked now, not after an hour);
- under ``srun`` with several tasks, a run folder of each task's own (every task is a ``train.py``).

Only global rank 0 writes a run's files (:func:`is_rank_zero`): a rank > 0 checks nothing here,
writes no ``.hydra/`` and logs to ``<job>_rank<N>.log`` (:func:`as_rank_child`; the submitit
launcher does the same for the tasks of a multirun job, :mod:`crack_lightning.sweeps.launcher`).

New run folders are unique anyway (``<date>_<time>_<random>``, see :mod:`crack_lightning.resolvers`),
so this matters for ``hydra.run.dir=`` / ``hydra.sweep.dir=`` given by hand.
"""

from __future__ import annotations

import glob
import os
import re
import tempfile
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from crack_lightning.cli.entry import fail
from crack_lightning.utils.files import is_within


def _held_files(folder: Path) -> list[str]:
    try:
        return sorted(p.name for p in folder.iterdir())
    except OSError:
        return []


def _value(config: DictConfig, key: str) -> str | None:
    """``key``'s value as a path string, or None when unset or not resolvable yet (a folder
    defined by the run folder itself, e.g. ``${hydra:runtime.output_dir}``)."""
    try:
        value = OmegaConf.select(config, key, throw_on_missing=False)
    except Exception:  # noqa: BLE001 - an interpolation of what Hydra sets later
        return None
    return None if value in (None, "", "???") else str(value)


# files that list the data: what they list lies in their folder (paths relative to it)
TABLES = ("data.manifest",)


def _folder_of(spec: str) -> Path:
    """The folder a path or glob reads: ``photos/**/*.jpg`` -> ``photos``; a file -> itself."""
    parts = Path(spec).expanduser().parts
    plain = parts[: next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))]
    return Path(*plain) if plain else Path(".")


def check_writable(folder: Path, key: str) -> None:
    """Create ``folder`` (it is ours) and write a probe into it; one line when that fails."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as err:
        fail(f"{key}={folder}: cannot write there ({err.strerror or type(err).__name__}). "
             f"Point {key} at a folder you can write to.")


class OwnFolders(Callback):
    """Refuse before anything is written (see the module docstring).

    Args:
        reads: keys of the data the command only reads (``data.root``, ``input``, ``ckpt``).
        writes: keys of other folders (or files) it writes besides the run folder (caches).
        fresh: keys of output folders that must be new or empty unless they are the run folder.
    """

    def __init__(self, reads: list[str] = (), writes: list[str] = (), fresh: list[str] = ()):
        self.reads, self.writes, self.fresh = list(reads), list(writes), list(fresh)

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _check_one_folder_under_srun(config)
        if not is_rank_zero():  # a DDP rank of this run: rank 0 owns the folder
            if (rank := launch_rank()) is not None:  # srun started it (Lightning's ranks get rank_command's overrides)
                as_rank_child(config, rank)
            return
        run_dir = Path(str(config.hydra.run.dir)).expanduser().absolute()
        resume = _value(config, "resume")
        if resume is not None:
            if not any((Path(resume) / name).is_dir() for name in (".hydra", "checkpoints")):  # Hydra would write there
                fail(f"resume={resume}: not a train.py run folder (no .hydra/ or checkpoints/ in it); give the folder "
                     f"of the run to continue, outputs/<task>/runs/<run>.")
            if not (is_within(run_dir, resume) and is_within(resume, run_dir)):
                fail(f"resume={resume} continues that run in its own folder; drop hydra.run.dir={run_dir}.")
        else:
            # under srun the other tasks start at once, and may have opened their logs already
            ranks = rf"{re.escape(str(config.hydra.job.name))}_rank\d+\.log" if launch_rank() is not None else None
            self._check_new(run_dir, "hydra.run.dir", "resume" in config, ignore=ranks)
        self._check_apart(config, run_dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir)).expanduser().absolute()
        self._check_new(sweep_dir, "hydra.sweep.dir")
        self._check_apart(config, sweep_dir, "hydra.sweep.dir")

    @staticmethod
    def _check_new(folder: Path, key: str, resumable: bool = False, ignore: str | None = None) -> None:
        names = [n for n in _held_files(folder) if not (ignore and re.fullmatch(ignore, n))] if folder.is_dir() else []
        if folder.exists() and (not folder.is_dir() or names):
            held = f"holds {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}" if names else "is a file"
            way = " Continue a stopped training run with resume=<its folder>." if resumable else ""
            fail(f"{key}={folder} {held}: a new run only writes into a new or empty folder. Choose another "
                 f"one, or leave {key} unset for a fresh one.{way}")

    def _check_apart(self, config: DictConfig, out_dir: Path, out_key: str) -> None:
        reads = [(key, _folder_of(value).parent if key in TABLES else _folder_of(value))
                 for key in self.reads if (value := _value(config, key))]
        outputs = [(out_key, out_dir)] + [(key, Path(v).expanduser()) for key in self.writes + self.fresh
                                          if (v := _value(config, key))]
        for read_key, data in reads:
            for key, out in outputs:
                if data.exists() and is_within(out, data):
                    fail(f"{key}={out} lies inside {read_key}={data}: the data a command reads is never written "
                         f"into. Choose a folder outside it.")
        for key in self.fresh:
            if (value := _value(config, key)) and not is_within(value, out_dir):
                self._check_new(Path(value).expanduser(), key)
        for key in self.writes:
            if (value := _value(config, key)) and not Path(value).suffix:  # folders; files go to checked folders
                check_writable(Path(value).expanduser(), key)


def under_srun() -> bool:
    """A SLURM task as Lightning's ``SLURMEnvironment.detect`` sees one (without its warning about
    an unused ``srun``): ``SLURM_NTASKS`` set, and a job name other than ``bash``/``interactive``."""
    return "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def launch_rank() -> int | None:
    """This process's global rank as its launcher put it in the environment, in the order Lightning
    reads them (TorchElastic first): torchrun's ``RANK``, else ``SLURM_PROCID`` of an ``srun`` task.
    None when neither says one: a process on its own, or a DDP rank Lightning started itself
    (``LOCAL_RANK``/``NODE_RANK``)."""
    env = os.environ
    if env.get("RANK"):
        return int(env["RANK"])
    if under_srun() and env.get("SLURM_PROCID"):
        return int(env["SLURM_PROCID"])
    return None


def is_rank_zero() -> bool:
    """Whether this process may write the run's files: global rank 0, or no rank at all. Readable
    before torch.distributed is set up (Hydra callbacks, the task wrapper of sweeps/job.py)."""
    rank = launch_rank()
    if rank is not None:
        return rank == 0
    return not any(int(os.environ.get(name) or 0) > 0 for name in ("LOCAL_RANK", "NODE_RANK"))


def as_rank_child(config: DictConfig, rank: int) -> None:
    """Make a Hydra job config that of rank ``rank`` > 0 of its run, before Hydra's ``run_job``
    uses it: no ``.hydra/`` (``hydra.output_subdir=null``) and its log in ``<job>_rank<N>.log``, as
    the overrides of Lightning's own ranks (:func:`crack_lightning.trainer.strategies.rank_command`)."""
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.output_subdir = None
        config.hydra.job.name = f"{config.hydra.job.name}_rank{rank}"


def _check_one_folder_under_srun(config: DictConfig) -> None:
    """``srun python train.py`` starts one train.py per task, and each would make a new run folder
    of its own (the name has the time and a random part): all tasks must be given the same one."""
    tasks = int(os.environ.get("SLURM_NTASKS") or 1)
    if tasks < 2 or launch_rank() is None or "RANK" in os.environ or _value(config, "resume") is not None:
        return
    overrides = OmegaConf.select(config, "hydra.overrides.hydra", default=None) or []
    if not any(str(o).startswith("hydra.run.dir=") for o in overrides):
        fail(f"srun started {tasks} tasks, each a train.py that would make a run folder of its own: give them "
             f"one, e.g. hydra.run.dir=outputs/train/runs/slurm-$SLURM_JOB_ID (and resume=<that folder> to "
             f"continue it). See docs/slurm.md.")
