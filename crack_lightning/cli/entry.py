"""How every command starts and ends: a setting the user typed wrong is one line and exit 2.

Two kinds of command share it. The Hydra commands (``train.py``, ``predict.py``, ``export.py``,
``crack-data``) compose ``conf/`` (:data:`CONF_DIR`) and are started by :func:`run`; the tools
(``crack-validate``, ``crack-synth``, ``crack-sweep-summary``) take ``argparse`` options, return
their exit status from ``main(argv) -> int`` and are wrapped by :func:`command`.

Our own refusals (:class:`~crack_lightning.CrackLightningError`) are turned into that line
inside the task by :func:`~crack_lightning.exit_on_user_error`. Hydra's refusals come earlier,
while it composes the config (an unknown choice ``backbone=mobilnetv2``, a key that does not
exist, an override its lexer cannot read), and Hydra prints them as several lines of text plus
its config search path and exits 1. :func:`run` asks Hydra to raise them instead and says each
in one line, with the way out. Importing this module costs nothing heavy: entry scripts call
it before torch or Lightning are imported.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

from crack_lightning import SIGTERM_EXIT

# The user's own HYDRA_FULL_ERROR, kept for the processes a command starts (DDP ranks inherit
# the environment, where HYDRA_FULL_ERROR is then ours).
_USER_FULL_ERROR = "CRACK_LIGHTNING_HYDRA_FULL_ERROR"
# The one conf/ of the checkout, absolute: a command finds it from any working directory.
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
INTERRUPTED = "Interrupted (Ctrl+C)."


def fail(message: str, status: int = 2) -> None:
    """Print one line on stderr and exit: for refusals before Hydra has set up logging."""
    print(f"[crack_lightning][ERROR] - {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    sys.exit(status)


def command(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Decorate an argparse command's ``main(argv) -> int``: a problem the user can fix
    (:class:`~crack_lightning.CrackLightningError`, a bad option) returns 2 after one line on
    stderr, Ctrl+C 143; ``--help`` returns 0. Its console script exits with what it returns."""
    import functools

    from crack_lightning import find_user_error

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except SystemExit as exc:  # argparse: --help 0, a bad option 2 (its usage line is printed)
            return exc.code if isinstance(exc.code, int) else 2
        except KeyboardInterrupt:
            print(f"error: {INTERRUPTED}", file=sys.stderr, flush=True)
            return SIGTERM_EXIT
        except Exception as err:  # noqa: BLE001 - only our own refusals are one line
            user_error = find_user_error(err)
            if user_error is None:
                raise
            print(f"error: {' '.join(str(user_error).split())}", file=sys.stderr, flush=True)
            return 2

    return wrapper


def run(main: Callable[[], Any], command: str = "python train.py") -> None:
    """Call a ``@hydra.main`` function; Hydra's own errors become one line and exit 2, a Ctrl+C
    before the task has its own handler one line and exit 143. ``HYDRA_FULL_ERROR=1`` keeps
    Hydra's full traceback."""
    os.environ.setdefault(_USER_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR", ""))
    os.environ["HYDRA_FULL_ERROR"] = "1"  # raise instead of print-and-exit(1): the message is said below
    try:
        main()
    except KeyboardInterrupt:
        fail(f"{INTERRUPTED} A training run continues from its newest checkpoint with resume=<its run "
             "folder>; one stopped before its first checkpoint starts again without it.", SIGTERM_EXIT)
    except Exception as err:  # noqa: BLE001 - only Hydra's and OmegaConf's refusals are translated
        message = hydra_error(err, command)
        if message is None or os.environ.get(_USER_FULL_ERROR) == "1":
            raise
        fail(message)


def hydra_error(err: BaseException, command: str = "python train.py") -> str | None:
    """One line for an error Hydra or OmegaConf raised while composing or resolving the config;
    None for anything else (a bug: its traceback is shown)."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    text = " ".join(str(err).split())
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and "/" in err.missing_cfg_file:
        group, _, name = err.missing_cfg_file.rpartition("/")
        choices = ", ".join(err.options or []) or "none"
        return (f"{group}={name}: no such choice in conf/{group}/. Choose one of: {choices}.")
    if isinstance(err, OverrideParseException):
        bad = _bad_override(text)
        if bad and any(ord(c) > 127 for c in bad):
            key, _, value = bad.partition("=")
            return (f"Hydra cannot read the non-ASCII characters of `{bad}` unquoted: quote the value for Hydra "
                    f"inside the shell's quotes, e.g. {command} \"{key}='{value}'\".")
        return (f"Cannot read the override{f' `{bad}`' if bad else ''}: {text.split(' See https')[0]}. "
                f"Quote values with spaces or special characters for Hydra, e.g. \"key='a value'\".")
    if isinstance(err, ConfigCompositionException) and (renamed := _moved_key(text)):
        return f"{renamed}. Every setting and its spelling: {command} --cfg job"
    if isinstance(err, ConfigCompositionException):
        cause = str(err.__cause__).strip().splitlines()[0] if err.__cause__ and str(err.__cause__).strip() else ""
        return f"{text}{f' ({cause})' if cause else ''}. Every setting and its spelling: {command} --cfg job"
    if isinstance(err, OmegaConfBaseException):
        key = getattr(err, "full_key", None)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"{key + ': ' if key else ''}{first}. Check that setting on the command line or in conf/."
    return None


def _moved_key(text: str) -> str | None:
    """``data.batch_size=8`` after the data keys were grouped: the new name, not Hydra's advice
    to append it with ``+``."""
    import re

    from crack_lightning.data.settings import moved

    found = re.match(r"Could not override '([^']+)'", text)
    key = found.group(1) if found else None
    value = next((a.partition("=")[2] for a in sys.argv[1:] if a.partition("=")[0] == key), None)
    new = moved(key, value) if key and value is not None else None
    return f"{key} is now {new.partition('=')[0]}: write {new}" if new else None


def _bad_override(text: str) -> str | None:
    """The command-line override Hydra could not parse: one with non-ASCII characters, else
    the one its message quotes (``LexerNoViableAltException: input=/x/... ^``)."""
    args = [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]
    unquoted = [a for a in args if not a.partition("=")[2].startswith(("'", '"'))]
    return (next((a for a in unquoted if any(ord(c) > 127 for c in a)), None)
            or next((a for a in args if a in text), None))
