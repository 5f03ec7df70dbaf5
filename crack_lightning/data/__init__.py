"""Data: the ImageFolder data module, splits, transforms and the synthetic dataset."""

__all__ = ["CrackDataModule"]


def __getattr__(name):
    # Lazy: the data commands (make data, validate) must not pay for importing
    # torch and Lightning (~20 s here) just to reach their own modules.
    if name == "CrackDataModule":
        from crack_lightning.data.datamodule import CrackDataModule

        return CrackDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
