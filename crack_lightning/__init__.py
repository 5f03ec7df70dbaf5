"""crack-lightning: concrete-crack image classifiers with Lightning, Hydra and timm."""

__version__ = "0.1.0"


class CrackLightningError(ValueError):
    """A problem the user can fix (bad config, bad dataset, missing weights).

    ``train.py`` prints its message as one line and exits with status 2 instead of
    showing a stack trace, so the message must name the file or key and the fix.
    """
