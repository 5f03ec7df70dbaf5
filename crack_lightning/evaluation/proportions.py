"""The interval of a proportion, for the intervals of the test metrics and the confident site threshold."""

from __future__ import annotations

import math

Z = {0.95: 1.959963984540054}  # the normal quantile of each two-sided confidence we use


def wilson(k: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (``(0, 1)`` when ``n`` is 0: nothing known)."""
    if n <= 0:
        return 0.0, 1.0
    z = Z[confidence]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)
