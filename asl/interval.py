"""The Wilson score interval of a proportion, in plain Python: the core (calibration) and the
bench's statistics both use it, and the core does not import scipy."""
from __future__ import annotations

import math
from statistics import NormalDist


def wilson(successes: float, n: int, confidence: float = 0.95) -> tuple[float | None, float | None]:
    """Wilson score interval (no continuity correction, as scipy's `method="wilson"`): unlike
    the normal approximation it stays inside [0, 1] and is not zero-width at 0 or n successes,
    which small cells hit often. `successes` may be fractional: the sum of scores in [0, 1]
    (the bench's interval of a mean score). n == 0 -> (None, None)."""
    if n <= 0:
        return None, None
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if successes <= 0 else max(0.0, centre - half)  # exactly 0 and 1 at the ends (float rounding
    high = 1.0 if successes >= n else min(1.0, centre + half)  # would leave them a hair inside)
    return low, high
