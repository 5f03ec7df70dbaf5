"""crack-lightning: concrete-crack image classifiers with Lightning, Hydra and timm."""

__version__ = "0.1.0"

from crack_lightning import resolvers as _resolvers  # noqa: E402,F401  (conf/ uses them)


# The exit status of a command stopped by SIGTERM or Ctrl+C (128 + SIGTERM, as a shell reports it).
SIGTERM_EXIT = 143


class CrackLightningError(ValueError):
    """A problem the user can fix (bad config, bad dataset, missing weights).

    ``train.py`` prints its message as one line and exits with status 2 instead of
    showing a stack trace, so the message must name the file or key and the fix.
    """


def find_user_error(err: BaseException | None) -> CrackLightningError | None:
    """The CrackLightningError behind ``err``, if any: Hydra's instantiate wraps errors."""
    while err is not None:
        if isinstance(err, CrackLightningError):
            return err
        err = err.__cause__ or err.__context__
    return None


def exit_on_user_error(task):
    """Decorate a command's task function: a problem the user can fix is logged as one
    line (console and the run's log) and ends the process with status 2, no stack trace."""
    import functools
    import logging
    import sys

    @functools.wraps(task)
    def wrapper(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except Exception as err:
            user_error = find_user_error(err)
            if user_error is None:
                raise
            logging.getLogger("crack_lightning").error("%s", user_error)
            sys.exit(2)

    return wrapper
