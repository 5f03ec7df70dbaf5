"""Using a trained model: load a checkpoint with everything prediction needs."""

from crack_lightning.inference.checkpoint import LoadedClassifier, load_classifier

__all__ = ["LoadedClassifier", "load_classifier"]
