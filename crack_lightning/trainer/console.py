"""What Lightning prints that our users cannot act on, silenced in one place.

:func:`quiet_lightning` runs in :func:`crack_lightning.trainer.build_trainer`, which every
command that trains goes through (``train.py``, and each DDP rank process it starts, which
runs ``train.py`` again). Each filter names one message and the module that emits it; any
other warning still shows. Checked by ``tests/test_console.py``.
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["quiet_lightning"]

# Lightning 2.6 advertises its cloud products at INFO on every Trainer (litlogger) and fit
# without a ModelCheckpoint (litmodels); no setting turns them off, and we use neither.
_TIP_LOGGER = "lightning.pytorch.utilities.rank_zero"
_TIP_PREFIX = "💡 Tip:"
# The handler `import lightning` gives the "lightning" logger (lightning/__init__.py, 2.6).
_LIGHTNING_CONSOLE_FORMAT = "%(levelname)s: %(message)s"


class _DropTips(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing ..." records, nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TIP_PREFIX)


def quiet_lightning() -> None:
    """Install the filters; calling it again adds nothing."""
    # torch >= 2.10 deprecates LeafSpec, which Lightning 2.6's CombinedLoader still builds
    # for every dataloader (lightning/pytorch/utilities/_pytree.py); nothing of ours calls it
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
    tips = logging.getLogger(_TIP_LOGGER)
    if not any(isinstance(f, _DropTips) for f in tips.filters):
        tips.addFilter(_DropTips())
    _one_console_line()


def _one_console_line() -> None:
    """Under Hydra's logging (handlers on the root logger) every Lightning line came out twice on
    the console: once as ``INFO: ...`` from the handler ``import lightning`` adds to the "lightning"
    logger, once from the root's. Lightning's own rule for ``lightning.pytorch`` (propagate when
    the root has handlers) is applied to the "lightning" logger too; its lines still reach the
    console and ``train.log``, once. Without root handlers (a library user) nothing changes."""
    if not logging.getLogger().handlers:
        return
    lightning_logger = logging.getLogger("lightning")
    for handler in list(lightning_logger.handlers):
        fmt = getattr(handler.formatter, "_fmt", None)
        if type(handler) is logging.StreamHandler and fmt == _LIGHTNING_CONSOLE_FORMAT:
            lightning_logger.removeHandler(handler)
