"""Images for training: decoding any mode to RGB, and a dataset over scanned samples."""

from __future__ import annotations


import numpy as np
from PIL import Image

from crack_lightning.data.imagefolder import Sample

def to_rgb(img: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """Any PIL image as 8-bit RGB, the way a viewer shows it.

    PIL's ``convert("RGB")`` clips 16-bit grayscale (``I;16``, ``I``: PNG/TIFF) at 255,
    which turns nearly every pixel white; here it is scaled (``v / 257``, so 65535 ->
    255).  Transparency (RGBA, LA, palette with a transparent colour) is composited
    over ``background`` instead of dropped, which would reveal whatever colour the
    invisible pixels store.  CMYK (and everything else) goes through PIL's conversion.
    Used by every path that feeds training, so they all see the same pixels.  Always
    returns a new, loaded image (it may outlive the file it was read from).
    """
    if img.mode == "I" or img.mode.startswith("I;16"):
        # mode I: a 16-bit PNG as Pillow may open it; wider TIFF values are clipped
        gray = np.rint(np.clip(np.asarray(img, np.float64), 0, 65535) / 257).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


class ImageListDataset:
    """Images read with PIL from a list of samples, converted to RGB and transformed. A map-style
    dataset for DataLoader (``__len__``, ``__getitem__``) without torch's base class, so the
    scanning rules above cost validate and make data no torch import."""

    def __init__(self, samples: list[Sample], transform=None):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item):
        """``item``: an index, or a :class:`~crack_lightning.data.sampling.Draw` whose key seeds this
        image's augmentation (the same pixels whatever the workers, the prefetching or a resume)."""
        key = getattr(item, "key", None)
        sample = self.samples[item if key is None else item.index]
        with Image.open(sample.path) as img:
            image = to_rgb(img)
        if self.transform is None:
            return image, sample.label
        if key is None:
            return self.transform(image), sample.label
        import torch

        with torch.random.fork_rng(devices=[]):  # the process's own stream moves on as if untouched
            torch.manual_seed(key)
            return self.transform(image), sample.label
