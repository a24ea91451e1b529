"""Small statistical helpers shared by the checks (no pandas, no I/O)."""

from __future__ import annotations

import math

__all__ = ["two_proportion_z"]


def two_proportion_z(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """One-sided two-proportion z-test that the current rate (x1/n1) exceeds the reference (x2/n2).

    Returns ``(z, p_value)``; ``p = 1`` when there is nothing to compare. Pooled variance.
    """
    if n1 == 0 or n2 == 0:
        return 0.0, 1.0
    p1, p2 = x1 / n1, x2 / n2
    pooled = (x1 + x2) / (n1 + n2)
    var = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if var <= 0:
        return 0.0, 1.0 if p1 <= p2 else 0.0
    z = (p1 - p2) / math.sqrt(var)
    return z, 0.5 * math.erfc(z / math.sqrt(2))
