"""While the backbone is frozen it is a fixed function: run an inference-optimised copy of it.

``trainer.frozen_backbone`` says how (:class:`FrozenMethod`): ``onnxruntime`` exports the
backbone once and runs it in onnxruntime, whose graph optimiser folds BatchNorm into the
convolutions; ``eager`` runs the module itself; ``auto`` (the default) takes onnxruntime
on the CPU when :class:`~crack_lightning.callbacks.FreezeUnfreeze` announces a frozen
phase long enough to pay back the export (:data:`PAYBACK_PIXELS`), eager otherwise.
MobileNetV2, 160 px, batch 32, 2-core CPU, forward only: eager 214 img/s; onnxruntime
600 img/s after a 1.3 s export; inductor with frozen weights 306 img/s after 27 s.

The copy is the weights of one moment. It is rebuilt whenever a parameter or buffer of
the backbone has changed since (in place: ``load_state_dict``, an optimizer step; or
replaced: a device or dtype move) -- a fingerprint of every tensor's storage and version
counter, checked at each call -- and dropped at the unfreeze and on checkpoint load. It
runs only while the whole backbone is in eval mode (frozen BatchNorm statistics), so it
computes exactly what the eager module would. It is no ``nn.Module`` attribute: state
dicts and checkpoints never see it, and pickling (``ddp_spawn``) leaves it behind.

>>> frozen = FrozenBackbone("eager")
>>> frozen.method
<FrozenMethod.EAGER: 'eager'>
"""

from __future__ import annotations

import io
import logging
import warnings
from enum import Enum
from typing import Callable

import torch
from torch import nn

from crack_lightning import CrackLightningError
from crack_lightning.models.feature_memo import FeatureMemo

log = logging.getLogger(__name__)

# auto: frozen pixels ahead (images x height x width) from which the copy is built. At 160 px
# the export costs ~1.3 s and saves ~3 ms an image (break-even near 450 images); the saving
# scales with the pixels, the export hardly. 2,000 images at 160 px: a margin for slower exports.
PAYBACK_PIXELS = 2000 * 160 * 160


class FrozenMethod(str, Enum):
    AUTO = "auto"
    EAGER = "eager"
    ONNXRUNTIME = "onnxruntime"


def _fingerprint(module: nn.Module) -> tuple:
    """Storage and version counter of every parameter and buffer: any in-place change
    (``copy_``, an optimizer step, BatchNorm statistics) or replacement (``.to()``) moves it."""
    return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in (*module.parameters(), *module.buffers()))


class FrozenBackbone:
    """The optimised copy of a frozen backbone, built on first use and rebuilt when stale.

    Args:
        method: ``auto``, ``eager`` or ``onnxruntime`` (see the module docstring).
    """

    def __init__(self, method: str | FrozenMethod = FrozenMethod.AUTO):
        try:
            self.method = FrozenMethod(method)
        except ValueError:
            raise CrackLightningError(f"trainer.frozen_backbone={method}: choose "
                                      f"{', '.join(m.value for m in FrozenMethod)}.") from None
        # what runs now; None: auto after a plan, decided at the first call (which knows the input size)
        self.chosen: FrozenMethod | None = FrozenMethod.EAGER if self.method is FrozenMethod.AUTO else self.method
        self._ahead = 0.0
        self.builds = 0  # copies made so far (tests; a log line names each)
        self._copy, self._key = None, None
        self._failed = False  # auto: the export failed once; eager from then on
        self.memo: FeatureMemo | None = None  # a frozen phase over fixed inputs: features seen, from memory

    def plan(self, images_ahead: float, device: torch.device, fixed_inputs: bool = False) -> None:
        """``auto``: the frozen phase ahead (training images still to pass through the frozen
        backbone) decides whether the copy pays back; other methods stay as asked.
        ``fixed_inputs``: no augmentation, so each frozen epoch sees the same images: their
        features are kept (:class:`FeatureMemo`; on the CPU, where hashing a batch costs less
        than the backbone)."""
        if fixed_inputs and device.type == "cpu" and self.memo is None:
            self.memo = FeatureMemo()
        # once chosen, kept to the phase's end (drop): the export is paid already
        if self.method is FrozenMethod.AUTO and self.chosen is not FrozenMethod.ONNXRUNTIME and not self._failed:
            self._ahead = images_ahead
            self.chosen = None if device.type == "cpu" and _has_onnxruntime() else FrozenMethod.EAGER

    def drop(self) -> None:
        """Forget the copy and the kept features (the unfreeze, a checkpoint load); ``auto`` waits
        for the next plan."""
        self._copy, self._key = None, None
        if self.memo is not None:
            self.memo.clear()
            self.memo = None
        if self.method is FrozenMethod.AUTO:
            self.chosen = FrozenMethod.EAGER

    @property
    def active(self) -> bool:
        """Whether a copy is held now."""
        return self._copy is not None

    def __call__(self, backbone: nn.Module, images: torch.Tensor, eager: Callable | None = None) -> torch.Tensor | None:
        """The frozen backbone's features of ``images``: from memory (fixed inputs), from the copy,
        by ``eager`` (default: the backbone) for the images the memory lacks; or None: run it eagerly."""
        if self.memo is not None and images.device.type == "cpu" and not any(m.training for m in backbone.modules()):
            def compute(x: torch.Tensor) -> torch.Tensor:
                features = self._from_copy(backbone, x)
                return (eager or backbone)(x) if features is None else features

            return self.memo(images, _fingerprint(backbone), compute)
        return self._from_copy(backbone, images)

    def _from_copy(self, backbone: nn.Module, images: torch.Tensor) -> torch.Tensor | None:
        if self.chosen is None:
            pays = self._ahead * images.shape[-2] * images.shape[-1] >= PAYBACK_PIXELS
            self.chosen = FrozenMethod.ONNXRUNTIME if pays else FrozenMethod.EAGER
        if self.chosen is FrozenMethod.EAGER or any(m.training for m in backbone.modules()):
            return None
        if not self._runs(images):
            return None
        key = (tuple(images.shape[1:]), _fingerprint(backbone))
        if key != self._key:
            self._copy, self._key = None, None
            try:
                self._copy = _onnxruntime_copy(backbone, images)
            except Exception as err:  # a backbone the exporter cannot take
                if self.method is not FrozenMethod.AUTO:
                    raise CrackLightningError(f"trainer.frozen_backbone=onnxruntime: this backbone does not export "
                                              f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); use auto or eager.") from None
                log.warning("Frozen backbone stays eager: the export failed (%s)", type(err).__name__)
                self.chosen, self._failed = FrozenMethod.EAGER, True
                return None
            self._key = key
            self.builds += 1
            log.info("Frozen backbone: an onnxruntime copy for inputs %s", list(images.shape[1:]))
        return self._copy(images)

    def _runs(self, images: torch.Tensor) -> bool:
        """onnxruntime computes float32 on the CPU: a CUDA batch, another dtype or autocast
        (whose bf16 numbers the copy would not repeat) stay eager, or stop an explicit ask."""
        ok = images.device.type == "cpu" and images.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
        if not ok and self.method is not FrozenMethod.AUTO:
            found = f"{str(images.dtype).removeprefix('torch.')} on {images.device.type}"
            raise CrackLightningError(f"trainer.frozen_backbone=onnxruntime runs float32 on the CPU without autocast; "
                                      f"this run has {found} (or autocast): use auto or eager.")
        return ok

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_copy": None, "_key": None, "memo": None}  # an onnxruntime session does not pickle


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _onnxruntime_copy(backbone: nn.Module, images: torch.Tensor):
    """Export ``backbone`` (eval mode, its weights now) for batches of any size at the size of
    ``images`` and return a callable from float tensors to features."""
    import onnxruntime as ort

    example = torch.zeros(2, *images.shape[1:])  # 2: an exporter may fix a batch of 1
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter: 1.3 s here against 5 s for torch.export's, same graph
        warnings.simplefilter("ignore")
        torch.onnx.export(backbone, (example,), buffer, input_names=["images"], output_names=["features"],
                          dynamic_axes={"images": {0: "batch"}}, dynamo=False)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # folds BatchNorm, fuses
    options.intra_op_num_threads = torch.get_num_threads()  # torch's setting holds for both
    options.inter_op_num_threads = 1
    # no spinning between calls: the head, backward and data path need the cores then
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        # onnxruntime reads NCHW: a channels_last batch is copied once into that order
        return torch.from_numpy(session.run(None, {"images": x.detach().contiguous().numpy()})[0])

    return run
