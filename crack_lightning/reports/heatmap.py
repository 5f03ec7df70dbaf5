"""The whole-photo heatmap picture: the photo with its crack probability blended over it,
the threshold's outline, a colour bar and a title line, drawn in numpy and PIL.

No matplotlib figure: laying one out and rasterising it cost more than all the rest of a
photo's picture together, and here the layout is fixed -- a title band above the photo and
a colour bar band to its right, both sized from the picture's long side.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from crack_lightning.reports.plots import overlay_heatmap

BAR_LABEL = "crack probability"
BAR_TICKS = (0.0, 0.5, 1.0)
BLACK = (0, 0, 0)


def _bands(max_side: int) -> tuple[int, int, int, int]:
    """(font size, widths of the colour bar band and heights of the title band above and the
    margin below -- room for the bar's bottom label) of a ``max_side`` px picture."""
    size = max(round(max_side / 64), min(10, max_side // 40))  # 10 px at least, unless the picture is tiny
    return size, 6 * size, 2 * size, size // 2


def photo_room(max_side: int) -> tuple[int, int]:
    """(width, height) the photo may take in a ``max_side`` px picture; the bands take the rest."""
    _, right, top, bottom = _bands(max_side)
    return max_side - right, max_side - top - bottom


@lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's own font: nothing to find on the machine


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The pixels of ``mask`` less than ``width`` px from its edge: the mask minus its erosion by
    a (2 width + 1) px square. Outside the picture counts as inside, so the picture's border is
    no edge and neither an empty mask nor a full one has an outline."""
    inner = mask.copy()
    for _ in range(width):  # each row then each column shift ANDs in one more neighbour (numpy buffers overlaps)
        inner[1:] &= inner[:-1]
        inner[:-1] &= inner[1:]
        inner[:, 1:] &= inner[:, :-1]
        inner[:, :-1] &= inner[:, 1:]
    return mask & ~inner


def draw_heatmap(photo: np.ndarray, heat: np.ndarray, threshold: float, title: str, max_side: int,
                 alpha: float = 0.45, cmap: str = "turbo") -> np.ndarray:
    """The picture's pixels, uint8 (H, W, 3): ``photo`` (uint8, the size of ``heat``, at most
    :func:`photo_room`) blended with ``heat``, the edge of ``heat > threshold`` in white, the
    colour bar to the right and ``title`` above."""
    size, right, top, bottom = _bands(max_side)
    h, w = heat.shape
    canvas = np.full((top + h + bottom, w + right, 3), 255, np.uint8)
    image = canvas[top:top + h, :w]
    image[:] = overlay_heatmap(photo, heat, alpha, cmap)
    image[outline(heat > threshold, max(1, round(max_side / 800)))] = 255
    bar = w + size // 2  # the bar's left edge; alpha 1 gives the colours alone, by the blend's own rule
    levels = np.linspace(1, 0, h)[:, None]
    canvas[top:top + h, bar:bar + size] = overlay_heatmap(np.zeros((h, 1, 3), np.uint8), levels, 1, cmap)

    out = Image.fromarray(canvas)
    pen = ImageDraw.Draw(out)
    pen.rectangle((bar - 1, top - 1, bar + size, top + h), outline=BLACK)  # a frame around the bar, not on it
    small = _font(round(0.8 * size))
    for value in BAR_TICKS:
        y = top + round((1 - value) * (h - 1))
        pen.line((bar + size, y, bar + size + size // 3, y), fill=BLACK, width=max(1, size // 12))
        pen.text((bar + size + size // 2, y), f"{value:g}", fill=BLACK, font=small, anchor="lm")
    x0, _, x1, _ = small.getbbox(BAR_LABEL, anchor="lm")
    label = Image.new("L", (x1 - x0, size))
    ImageDraw.Draw(label).text((-x0, size // 2), BAR_LABEL, fill=255, font=small, anchor="lm")
    label = label.transpose(Image.Transpose.ROTATE_90)
    out.paste(BLACK, (bar + 3 * size, top + (h - label.height) // 2), label)

    font = _font(size)  # shrunk until the title fits over the photo (a portrait's is narrow)
    font = _font(max(1, min(size, int(size * (w - size) / font.getlength(title)))))
    pen.text((w / 2, top / 2), title, fill=BLACK, font=font, anchor="mm")
    return np.asarray(out)
