"""Small statistics shared by the probes and the report (no torch)."""

from __future__ import annotations

import math
from collections.abc import Sequence

# two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30 (standard tables); beyond: 1.96
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip


def mean_ci95(values: list[float]) -> tuple[float, float | None]:
    """Mean and 95% interval half-width (t · s / √n); None for a single value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = _T975[n - 2] if n - 2 < len(_T975) else 1.96
    return mean, t * sd / math.sqrt(n)


def geometric_bins(
    values: Sequence[float | None], per_octave: int
) -> tuple[list[float], list[float]]:
    """Average values[o] (o = 0-based offset, x = o + 1) in bins [2^(k/p), 2^((k+1)/p))."""
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for o, v in enumerate(values):
        if v is None:
            continue
        k = math.floor(math.log2(o + 1) * per_octave + 1e-9)
        sums[k] = sums.get(k, 0.0) + v
        counts[k] = counts.get(k, 0) + 1
    ks = sorted(sums)
    xs = [2 ** ((k + 0.5) / per_octave) for k in ks]
    return xs, [sums[k] / counts[k] for k in ks]
