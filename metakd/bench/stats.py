"""Small statistics for paired benchmark comparisons: Student-t quantiles, paired differences with a
t-interval, and the smallest difference a paired design could detect. Pure Python (no SciPy)."""

from __future__ import annotations

import math
import statistics
from typing import Sequence


def t_cdf(x: float, df: int) -> float:
    """P(T <= x) for Student's t with ``df`` degrees of freedom (Simpson's rule on the density)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if x < 0:
        return 1.0 - t_cdf(-x, df)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    density = lambda u: math.exp(log_c - (df + 1) / 2 * math.log1p(u * u / df))  # noqa: E731
    n = 4000  # even; the density is smooth, so this is exact to ~1e-10 for the quantiles used here
    h = x / n
    total = density(0.0) + density(x) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, n))
    return 0.5 + total * h / 3


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on ``t_cdf``)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95,
                      power: float = 0.8) -> dict[str, float | int | None]:
    """``b - a`` over pairs (same seed): mean, sample std, n, the two-sided ``level`` t-interval
    (``ci_low``, ``ci_high``; None for one pair) and ``detectable``: the smallest true mean
    difference this design finds with probability ``power`` at that level,
    (t_{1-α/2} + t_{power}) · sd / √n (None for one pair or no spread)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_difference needs equally many values on both sides, got {len(a)} and {len(b)}")
    diffs = [y - x for x, y in zip(a, b)]
    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        return {"mean": mean, "std": None, "n": n, "ci_low": None, "ci_high": None, "detectable": None}
    sd = statistics.stdev(diffs)
    half = t_quantile(1 - (1 - level) / 2, n - 1) * sd / math.sqrt(n)
    detectable = (t_quantile(1 - (1 - level) / 2, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "std": sd, "n": n, "ci_low": mean - half, "ci_high": mean + half,
            "detectable": detectable if sd > 0 else None}


__all__ = ["paired_difference", "t_cdf", "t_quantile"]
