"""Welch intervals, one-sided Welch t-tests, non-inferiority, TOST and Holm: pure functions.

Everything works on the *oriented* difference of means ``d`` of two independent samples
(method a, method b), positive when a is better: ``d = mean_b - mean_a`` for a metric
where lower is better (a loss), ``d = mean_a - mean_b`` otherwise (an accuracy). Its
standard error is Welch's ``se = sqrt(s_a^2 / n_a + s_b^2 / n_b)`` with the
Welch-Satterthwaite degrees of freedom, so a (1 - 2 q) interval is ``d +- t_{df, 1-q} se``.

Degenerate samples are explicit: fewer than two finite values on a side give no test
(``Welch.reason`` says why, every p is NaN and every verdict inconclusive); no spread on
either side makes the interval the point ``d`` (p is 0 or 1 by which side of the
threshold ``d`` lies on).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIRMED, CONTRADICTED, INCONCLUSIVE = "confirmed", "contradicted", "inconclusive"


@dataclass(frozen=True)
class Welch:
    """Two samples, summarised: the oriented difference ``diff``, its ``se`` and ``df``."""

    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    std_a: float
    std_b: float
    diff: float
    se: float
    df: float
    reason: str = ""  # why there is no test, or a note (no spread)

    @property
    def testable(self) -> bool:
        return not math.isnan(self.diff)

    def quantile(self, q: float) -> float:
        """``t_{df, q}``; with no spread the t distribution is not needed (se = 0)."""
        return float(stats.t.ppf(q, self.df)) if self.se > 0 else 0.0

    def interval(self, level: float) -> tuple[float, float]:
        """The two-sided ``level`` Welch interval of ``diff`` (the point when se = 0)."""
        if not self.testable:
            return math.nan, math.nan
        half = self.quantile(0.5 + level / 2) * self.se
        return self.diff - half, self.diff + half

    def p_above(self, threshold: float = 0.0) -> float:
        """One-sided p of H0: d <= threshold against H1: d > threshold."""
        if not self.testable:
            return math.nan
        if self.se == 0:
            return 0.0 if self.diff > threshold else 1.0
        return float(stats.t.sf((self.diff - threshold) / self.se, self.df))

    def p_below(self, threshold: float = 0.0) -> float:
        """One-sided p of H0: d >= threshold against H1: d < threshold."""
        if not self.testable:
            return math.nan
        if self.se == 0:
            return 0.0 if self.diff < threshold else 1.0
        return float(stats.t.cdf((self.diff - threshold) / self.se, self.df))


def welch(a: Sequence[float], b: Sequence[float], lower_is_better: bool) -> Welch:
    """Summarise the finite values of ``a`` and ``b``; ``diff`` is positive when a is better."""
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    n_a, n_b = len(x), len(y)
    mean_a = float(x.mean()) if n_a else math.nan
    mean_b = float(y.mean()) if n_b else math.nan
    std_a = float(x.std(ddof=1)) if n_a > 1 else math.nan
    std_b = float(y.std(ddof=1)) if n_b > 1 else math.nan
    if n_a < 2 or n_b < 2:
        reason = f"fewer than 2 finite values (n_a={n_a}, n_b={n_b}): no test"
        return Welch(n_a, n_b, mean_a, mean_b, std_a, std_b, math.nan, math.nan, math.nan, reason)
    diff = mean_b - mean_a if lower_is_better else mean_a - mean_b
    va, vb = std_a**2 / n_a, std_b**2 / n_b
    se = math.sqrt(va + vb)
    if se == 0:
        reason = "no spread on either side: the interval is the point difference"
        return Welch(n_a, n_b, mean_a, mean_b, std_a, std_b, diff, 0.0, math.inf, reason)
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    return Welch(n_a, n_b, mean_a, mean_b, std_a, std_b, diff, se, df)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN counts as 1: a pair without a test)."""
    p = np.nan_to_num(np.asarray(p_values, dtype=float), nan=1.0)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.maximum.accumulate(adjusted)
    return out


def better(tests: Sequence[Welch], alpha: float) -> list[dict]:
    """The claim "a is better than b", for every pair: one-sided Welch t-tests, Holm over the pairs.

    A pair is confirmed when its Holm-adjusted p (H1: d > 0) is below ``alpha``,
    contradicted when the Holm-adjusted p of the opposite test (H1: d < 0) is.
    """
    p = [w.p_above(0.0) for w in tests]
    q = [w.p_below(0.0) for w in tests]
    p_holm, q_holm = holm(p), holm(q)
    out = []
    for i, w in enumerate(tests):
        verdict = INCONCLUSIVE
        if w.testable and p_holm[i] < alpha:
            verdict = CONFIRMED
        elif w.testable and q_holm[i] < alpha:
            verdict = CONTRADICTED
        out.append(
            dict(p_value=p[i], p_holm=p_holm[i], p_opposite=q[i], p_opposite_holm=q_holm[i],
                 verdict=verdict)
        )  # fmt: skip
    return out


def non_inferior(w: Welch, delta: float, alpha: float) -> dict:
    """The claim "a is at least as good as b", with margin ``delta`` (H0: d <= -delta).

    Confirmed when the one-sided (1 - alpha) lower bound of d is above -delta (p < alpha),
    contradicted when the one-sided (1 - alpha) upper bound is below -delta.
    """
    low, high = w.interval(1 - 2 * alpha)
    verdict = INCONCLUSIVE
    if w.testable and low > -delta:
        verdict = CONFIRMED
    elif w.testable and high < -delta:
        verdict = CONTRADICTED
    return dict(p_value=w.p_above(-delta), decision_low=low, decision_high=high, verdict=verdict)


def equivalent(w: Welch, delta: float, alpha: float) -> dict:
    """The claim "a and b are similar", with margin ``delta``: two one-sided tests (TOST).

    Confirmed when the (1 - 2 alpha) interval lies inside (-delta, delta) (TOST p < alpha),
    contradicted when it lies wholly outside [-delta, delta].
    """
    low, high = w.interval(1 - 2 * alpha)
    p = max(w.p_above(-delta), w.p_below(delta)) if w.testable else math.nan
    verdict = INCONCLUSIVE
    if w.testable and -delta < low and high < delta:
        verdict = CONFIRMED
    elif w.testable and (low > delta or high < -delta):
        verdict = CONTRADICTED
    return dict(p_value=p, decision_low=low, decision_high=high, verdict=verdict)


def combine(verdicts: Sequence[str]) -> str:
    """A claim over several pairs: confirmed if every pair is, contradicted if any is."""
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    if verdicts and all(v == CONFIRMED for v in verdicts):
        return CONFIRMED
    return INCONCLUSIVE
