"""Using a trained model: load a checkpoint with everything prediction needs.

The package itself imports no torch (its names are looked up when first used), so that
``settings`` and ``model_files`` can refuse a wrong setting or file before torch is imported.
"""

__all__ = ["LoadedClassifier", "load_classifier"]


def __getattr__(name: str):
    if name in __all__:
        from crack_lightning.inference import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
