"""Statistics over a handful of seeds: mean, standard deviation, the t-based 95 % confidence
interval of the mean, and Welch's two-sample t-test (unequal variances, Welch-Satterthwaite degrees
of freedom), with Student's t distribution computed here (the regularised incomplete beta function,
Numerical Recipes' continued fraction) so that reports need no SciPy.

Why Welch and not a bootstrap: with 2-5 seeds a bootstrap resamples from at most a few distinct
values and its intervals are too narrow; the t-test accounts for estimating the spread from so few.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

LEVEL = 0.95
ALPHA = 1 - LEVEL


def _betacf(a: float, b: float, x: float) -> float:
    tiny, qab, qap, qam = 1e-300, a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1 + aa * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_sf2(t: float, df: float) -> float:
    """Two-sided tail probability P(|T| >= |t|) of Student's t with ``df`` degrees of freedom."""
    return _betainc(df / 2, 0.5, df / (df + t * t))


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (p > 0.5), by bisection on the tail."""
    low, high = 0.0, 1.0
    while t_sf2(high, df) > 2 * (1 - p):
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if t_sf2(mid, df) > 2 * (1 - p) else (low, mid)
    return (low + high) / 2


@dataclass
class Summary:
    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.values) if self.n > 1 else None

    @property
    def ci(self) -> tuple[float, float] | None:
        """The 95 % confidence interval of the mean (t with n-1 degrees of freedom); None for one seed."""
        if self.n < 2:
            return None
        half = t_quantile(1 - ALPHA / 2, self.n - 1) * self.sd / math.sqrt(self.n)
        return self.mean - half, self.mean + half


@dataclass
class Welch:
    diff: float  # mean of a - mean of b
    t: float
    df: float
    p: float

    @property
    def resolved(self) -> bool:
        return self.p < ALPHA


def welch(a: list[float], b: list[float]) -> Welch | None:
    """Welch's t-test of mean(a) = mean(b); None when either side has fewer than 2 values."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    if va + vb == 0:  # no spread at all: any difference is exact, none is no difference
        return Welch(diff, math.copysign(math.inf, diff) if diff else 0.0, len(a) + len(b) - 2, 0.0 if diff else 1.0)
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return Welch(diff, t, df, t_sf2(t, df))


def verdict(name: str, against: str, a: list[float], b: list[float], metric: str) -> str:
    """One sentence: is the difference of ``name`` from ``against`` resolved at these seeds?"""
    test = welch(a, b)
    seeds = f"{len(a)} and {len(b)} seed(s)"
    if test is None:
        return (f"{name} vs {against}: {metric} {statistics.fmean(a) - statistics.fmean(b):+.4f}; "
                f"not testable with {seeds} (Welch's t-test needs at least 2 on each side: use --seeds 2 or more).")
    said = (f"{name} vs {against}: {metric} {test.diff:+.4f} "
            f"(Welch t = {test.t:.2f}, df = {test.df:.1f}, p = {test.p:.3g}): ")
    if test.resolved:
        return (said + f"resolved at {seeds}, {'higher' if test.diff > 0 else 'lower'} beyond the seed-to-seed noise "
                f"(p < {ALPHA:g}).")
    return said + f"not resolved at {seeds}; the difference is within the seed-to-seed noise."
