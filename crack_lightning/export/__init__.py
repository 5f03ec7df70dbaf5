"""Writing a trained model for deployment, apart from running it (:mod:`crack_lightning.inference`):
:mod:`.run` is ``export.py``'s task, :mod:`.onnx` writes and checks the ``.onnx`` file (preprocessing
inside), :mod:`.dense` its whole-photo graph beside it, :mod:`.quantize` the ``onnx-int8`` format."""
