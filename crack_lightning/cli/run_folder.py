"""A run folder belongs to one run, and nothing we write lands in the data we read.

:class:`OwnFolders` is a Hydra callback (``hydra.callbacks.own_folders`` in ``conf/train.yaml``,
``predict.yaml``, ``export.yaml``). It runs before Hydra creates the run folder or writes its
``.hydra/``, and refuses, in one line and with exit status 2:

- a run folder that already holds files (another run's: its checkpoints would be restored,
  its logs cut, its config overwritten), unless the command is ``resume=<that folder>``;
- a sweep folder that already holds files (its old jobs would be summarised as new ones);
- a run, sweep, cache or output folder inside the data the command reads (``data.root``, the
  folder of ``data.manifest``, ``input``), or a data folder inside the run folder;
- a folder it must write into but cannot create or write (checked now, not after an hour).

New run folders are unique anyway (``<date>_<time>_<random>``, see :mod:`crack_lightning.resolvers`),
so this matters for ``hydra.run.dir=`` / ``hydra.sweep.dir=`` given by hand.
"""

from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

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
        if _is_rank_child():  # a DDP rank of this run, started by Lightning: rank 0 owns the folder
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
            self._check_new(run_dir, "hydra.run.dir", "resume" in config)
        self._check_apart(config, run_dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir)).expanduser().absolute()
        self._check_new(sweep_dir, "hydra.sweep.dir")
        self._check_apart(config, sweep_dir, "hydra.sweep.dir")

    @staticmethod
    def _check_new(folder: Path, key: str, resumable: bool = False) -> None:
        names = _held_files(folder) if folder.is_dir() else []
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


def _is_rank_child() -> bool:
    return any(int(os.environ.get(name, "0") or 0) > 0 for name in ("LOCAL_RANK", "NODE_RANK"))
