"""Summary statistics over repeated runs (seeds): mean, sample std and Student-t 95 % CIs.

Shared by `vmr compare` and study reports. Pure functions on lists of floats; None where a
value is undefined (std of one value, a CI from one value) so reports can say so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# t_{0.975, df} for df = 1..30, used when SciPy is not installed (from the t distribution's
# quantile function); above 30, the Cornish-Fisher expansion around the normal quantile.
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959964


def t975_table(df: int) -> float:
    """t_{0.975, df} without SciPy: the table above, then two terms of the expansion
    t ~ z + (z^3 + z) / (4 df) + (5 z^5 + 16 z^3 + 3 z) / (96 df^2) (error < 1e-4 for df > 30)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom."""
    try:
        from scipy.stats import t
    except ImportError:
        return t975_table(df)
    return float(t.ppf(0.975, df))


def mean(xs: Sequence[float]) -> float | None:
    return math.fsum(xs) / len(xs) if xs else None


def std(xs: Sequence[float]) -> float | None:
    """Sample standard deviation (ddof=1); None for fewer than two values."""
    if len(xs) < 2:
        return None
    m = math.fsum(xs) / len(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def ci95(xs: Sequence[float]) -> tuple[float, float] | None:
    """mean +- t_{0.975, n-1} * sd / sqrt(n); None for fewer than two values."""
    sd = std(xs)
    if sd is None:
        return None
    m = math.fsum(xs) / len(xs)
    half = t975(len(xs) - 1) * sd / math.sqrt(len(xs))
    return m - half, m + half


def paired_differences(values: dict[int, float], control: dict[int, float]) -> list[float]:
    """values[s] - control[s] for every key s (a seed) present in both, in key order."""
    return [values[s] - control[s] for s in sorted(values.keys() & control.keys())]


def summarize(xs: Sequence[float]) -> dict[str, float | None | int]:
    """{"n", "mean", "std", "ci95_lo", "ci95_hi"} of `xs`."""
    ci = ci95(xs)
    return {"n": len(xs), "mean": mean(xs), "std": std(xs),
            "ci95_lo": ci[0] if ci else None, "ci95_hi": ci[1] if ci else None}
