"""Data: the ImageFolder data module and everything before its loaders.

:mod:`.datamodule` (loaders, device batches), :mod:`.prepare` (generate -> screen -> split ->
decode), :mod:`.settings` (``data.split``, ``.screening``, ``.cache``, ``.loader``),
:mod:`.imagefolder` (which files are images of which class), :mod:`.splits`,
:mod:`.augmentation`, :mod:`.decoded_cache`; :mod:`.sources` (where datasets come from),
:mod:`.quality` (is the data fit to train on), :mod:`.synthetic` (the stand-in dataset).
"""

__all__ = ["CrackDataModule"]


def __getattr__(name):
    # Lazy: the data commands (make data, validate) must not pay for importing
    # torch and Lightning (~20 s here) just to reach their own modules.
    if name == "CrackDataModule":
        from crack_lightning.data.datamodule import CrackDataModule

        return CrackDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
