"""Welch tests, intervals and verdicts for the §6.2 checks, and how pairs combine: pure functions.

The five tests (better, non_inferior, equivalent, different, share), their power figures
and the two ways pairs combine (intersection-union, Holm); docs/claims.md explains them.

Everything works on the *oriented* difference of means ``d`` of two independent samples
(method a, method b), positive when a is better: ``d = mean_b - mean_a`` for a metric
where lower is better (a loss), ``d = mean_a - mean_b`` otherwise (an accuracy). Its
standard error is Welch's ``se = sqrt(s_a^2 / n_a + s_b^2 / n_b)`` with the
Welch-Satterthwaite degrees of freedom, so a (1 - 2 q) interval is ``d +- t_{df, 1-q} se``.

Every test returns one row: ``p_value`` (the one-sided p of the statement), ``p_contra``
(the one-sided p of its contrary), the decision interval, and a verdict: confirmed
(``p_value < alpha``), contradicted (``p_contra < alpha``), underpowered (for the margin
tests: even an observed difference of zero could not be confirmed at this spread and n),
untestable (no test: fewer than two finite values on a side, or no spread on either side:
scipy and statsmodels give NaN there; equal values never confirm anything), or inconclusive.

Margins are compared with a tolerance (``RTOL`` of the values' scale): a bound within
rounding of the margin is a tie, which neither confirms nor contradicts, and a spread below
rounding is no spread.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIRMED, CONTRADICTED, INCONCLUSIVE = "confirmed", "contradicted", "inconclusive"
UNDERPOWERED, UNTESTABLE = "underpowered", "untestable"
VERDICTS = (CONFIRMED, CONTRADICTED, UNDERPOWERED, UNTESTABLE, INCONCLUSIVE)
QUANTIFIERS = ("every", "any")
RTOL = 1e-9  # relative to the values' scale: a smaller spread or gap is rounding
NAN = math.nan


def _tolerance(*scale: float) -> float:
    return RTOL * max([abs(x) for x in scale if math.isfinite(x)] + [1e-12])


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
    reason: str = ""  # why there is no test
    tol: float = 0.0  # rounding at the values' scale

    @property
    def testable(self) -> bool:
        return math.isfinite(self.diff) and math.isfinite(self.se) and self.se > self.tol

    def quantile(self, q: float) -> float:
        """``t_{df, q}``."""
        return float(stats.t.ppf(q, self.df)) if self.testable else NAN

    def interval(self, level: float) -> tuple[float, float]:
        """The two-sided ``level`` Welch interval of ``diff`` (NaN without a test)."""
        half = self.quantile(0.5 + level / 2) * self.se
        return self.diff - half, self.diff + half

    def p_above(self, threshold: float = 0.0) -> float:
        """One-sided p of H0: d <= threshold against H1: d > threshold."""
        if not self.testable:
            return NAN
        return float(stats.t.sf((self.diff - threshold) / self.se, self.df))

    def p_below(self, threshold: float = 0.0) -> float:
        """One-sided p of H0: d >= threshold against H1: d < threshold."""
        if not self.testable:
            return NAN
        return float(stats.t.cdf((self.diff - threshold) / self.se, self.df))


def _finite(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    return x[np.isfinite(x)]


def welch(a: Sequence[float], b: Sequence[float], lower_is_better: bool) -> Welch:
    """Summarise the finite values of ``a`` and ``b``; ``diff`` is positive when a is better."""
    x, y = _finite(a), _finite(b)
    n_a, n_b = len(x), len(y)
    mean_a = float(x.mean()) if n_a else NAN
    mean_b = float(y.mean()) if n_b else NAN
    std_a = float(x.std(ddof=1)) if n_a > 1 else NAN
    std_b = float(y.std(ddof=1)) if n_b > 1 else NAN
    if n_a < 2 or n_b < 2:
        reason = f"fewer than 2 finite values (n_a={n_a}, n_b={n_b}): no test"
        return Welch(n_a, n_b, mean_a, mean_b, std_a, std_b, NAN, NAN, NAN, reason)
    diff = mean_b - mean_a if lower_is_better else mean_a - mean_b
    va, vb = std_a**2 / n_a, std_b**2 / n_b
    se, tol = math.sqrt(va + vb), _tolerance(mean_a, mean_b)
    # A side whose spread is rounding counts as none (its term would blow df up).
    terms = [v**2 / (n - 1) for v, n in ((va, n_a), (vb, n_b)) if math.sqrt(v) > tol]
    if se <= tol or not terms:
        reason = "no spread on either side (all values equal): no test"
        return Welch(n_a, n_b, mean_a, mean_b, std_a, std_b, diff, se, NAN, reason, tol)
    df = (va + vb) ** 2 / sum(terms)
    return Welch(n_a, n_b, mean_a, mean_b, std_a, std_b, diff, se, df, "", tol)


def half_width(std_a: float, std_b: float, n_a: int, n_b: int, alpha: float) -> float:
    """The half-width ``t_{df, 1-alpha} se`` of the (1 - 2 alpha) Welch interval for the given
    spreads and seeds: the smallest margin an observed difference of zero could confirm."""
    va, vb = std_a**2 / n_a, std_b**2 / n_b
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    return float(stats.t.ppf(1 - alpha, df) * math.sqrt(va + vb))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN counts as 1: a pair without a test)."""
    p = np.nan_to_num(np.asarray(p_values, dtype=float), nan=1.0)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.maximum.accumulate(adjusted)
    return out


def _row(testable: bool, p: float, q: float, alpha: float, underpowered: bool = False,
         **extra) -> dict:  # fmt: skip
    if not testable:
        verdict = UNTESTABLE
    elif q < alpha:
        verdict = CONTRADICTED
    elif p < alpha:
        verdict = CONFIRMED
    else:
        verdict = UNDERPOWERED if underpowered else INCONCLUSIVE
    out = dict(p_value=p, p_contra=q, decision_low=NAN, decision_high=NAN, min_margin=NAN,
               power_at_zero=NAN)  # fmt: skip
    return out | extra | {"verdict": verdict}


def better(w: Welch, alpha: float) -> dict:
    """The claim "a is better than b": one-sided Welch t-test of d > 0; contrary: d < 0 (each
    at alpha: under no true difference one pair gets a definite verdict 2 alpha of the time)."""
    low, high = w.interval(1 - 2 * alpha)
    return _row(w.testable, w.p_above(w.tol), w.p_below(-w.tol), alpha, decision_low=low,
                decision_high=high)  # fmt: skip


def _power(w: Welch, delta: float, alpha: float, sides: int) -> tuple[float, float]:
    """The smallest margin an observed d = 0 would confirm, and the chance of confirming when
    the true d is 0 (d / se taken as t-distributed with the observed se and df)."""
    if not w.testable:
        return NAN, NAN
    t = w.quantile(1 - alpha)
    room = delta / w.se - t
    power = stats.t.sf(-room, w.df) if sides == 1 else max(0.0, 2 * stats.t.cdf(room, w.df) - 1)
    return t * w.se, float(power)


def non_inferior(w: Welch, delta: float, alpha: float) -> dict:
    """The claim "a is at least as good as b", margin ``delta``: H0 d <= -delta. Confirmed
    when the one-sided (1 - alpha) lower bound of d is above -delta, contradicted when the
    upper bound is below it; underpowered when even d = 0 observed would not be confirmed."""
    low, high = w.interval(1 - 2 * alpha)
    smallest, power = _power(w, delta, alpha, sides=1)
    p, q = w.p_above(-delta + w.tol), w.p_below(-delta - w.tol)
    return _row(w.testable, p, q, alpha, smallest >= delta - w.tol, decision_low=low,
                decision_high=high, min_margin=smallest, power_at_zero=power)  # fmt: skip


def _tost(w: Welch, delta: float) -> float:
    return max(w.p_above(-delta + w.tol), w.p_below(delta - w.tol)) if w.testable else NAN


def equivalent(w: Welch, delta: float, alpha: float) -> dict:
    """The claim "a and b are similar", margin ``delta``: two one-sided tests (TOST).
    Confirmed when the (1 - 2 alpha) interval lies inside (-delta, delta), contradicted when
    it lies wholly outside [-delta, delta] (each side at alpha; at most one side can be near
    its margin); underpowered when even d = 0 observed would not be confirmed."""
    low, high = w.interval(1 - 2 * alpha)
    smallest, power = _power(w, delta, alpha, sides=2)
    q = min(w.p_above(delta + w.tol), w.p_below(-delta - w.tol)) if w.testable else NAN
    return _row(w.testable, _tost(w, delta), q, alpha, smallest >= delta - w.tol,
                decision_low=low, decision_high=high, min_margin=smallest,
                power_at_zero=power)  # fmt: skip


def different(w: Welch, up: bool, delta: float, alpha: float) -> dict:
    """The claim "a and b differ", in the direction ``up`` (d > 0) chosen for all pairs of a check:
    ``p_value`` is twice the one-sided p that way, so choosing the direction from the data
    costs nothing (all pairs up at alpha/2, or all down at alpha/2: alpha in all).
    Contrary: the pair is equivalent within ``delta`` (TOST)."""
    low, high = w.interval(1 - alpha)
    one = w.p_above(w.tol) if up else w.p_below(-w.tol)
    p = min(1.0, 2 * one) if w.testable else NAN
    return _row(w.testable, p, _tost(w, delta), alpha, decision_low=low,
                decision_high=high)  # fmt: skip


def share(groups: Mapping[str, Sequence[float]], a: str, b: str, x: str, y: str, rho: float,
          alpha: float) -> dict:  # fmt: skip
    """The claim "x - y is more than ``rho`` of the gap a - b", on means of independent groups.

    The share ``(m_x - m_y) / (m_a - m_b)`` has Fieller's interval (the methods may repeat:
    the covariance of numerator and denominator is kept), with the Welch-Satterthwaite df of
    the contrast ``N - rho D`` at the tested share. Confirmed when the gap D is significant
    and the one-sided test of ``N - rho D`` in D's direction rejects (``p_value`` is the
    larger of the two p's: the Fieller lower bound above rho); contradicted when the gap is
    significant and the share significantly below rho.
    """
    values = {m: _finite(groups[m]) for m in dict.fromkeys((a, b, x, y))}
    n = {m: len(v) for m, v in values.items()}
    out = dict(p_value=NAN, p_contra=NAN, diff=NAN, se=NAN, df=NAN, ci_low=NAN, ci_high=NAN,
               decision_low=NAN, decision_high=NAN, reason="")  # fmt: skip
    if min(n.values()) < 2:
        short = ", ".join(f"{m} n={k}" for m, k in n.items() if k < 2)
        return out | {"verdict": UNTESTABLE, "reason": f"fewer than 2 finite values ({short})"}
    mean = {m: float(v.mean()) for m, v in values.items()}
    var = {m: float(v.var(ddof=1)) / n[m] for m, v in values.items()}
    cn, cd = dict.fromkeys(values, 0.0), dict.fromkeys(values, 0.0)
    cn[x], cn[y], cd[a], cd[b] = cn[x] + 1, cn[y] - 1, cd[a] + 1, cd[b] - 1
    num, gap = sum(cn[m] * mean[m] for m in mean), sum(cd[m] * mean[m] for m in mean)
    vn, vd = sum(cn[m] ** 2 * var[m] for m in var), sum(cd[m] ** 2 * var[m] for m in var)
    cov = sum(cn[m] * cd[m] * var[m] for m in var)
    terms = {m: (cn[m] - rho * cd[m]) ** 2 * var[m] for m in var}
    se, tol = math.sqrt(sum(terms.values())), _tolerance(*mean.values())
    if se <= tol or math.sqrt(vd) <= tol or gap == 0:
        return out | {"verdict": UNTESTABLE, "diff": num / gap if gap else NAN,
                      "reason": "no spread, or no gap: no test"}  # fmt: skip
    df = sum(terms.values()) ** 2 / sum(t**2 / (n[m] - 1) for m, t in terms.items() if t > 0)
    sign = 1.0 if gap > 0 else -1.0
    z, z_gap = sign * (num - rho * gap) / se, abs(gap) / math.sqrt(vd)
    p_gap = float(stats.t.sf(z_gap, df))
    p, q = max(float(stats.t.sf(z, df)), p_gap), max(float(stats.t.cdf(z, df)), p_gap)

    def fieller(level: float) -> tuple[float, float]:
        t2 = float(stats.t.ppf(0.5 + level / 2, df)) ** 2
        qa, qb, qc = gap**2 - t2 * vd, num * gap - t2 * cov, num**2 - t2 * vn
        if qa <= 0:  # the gap is not significant at this level: unbounded
            return -math.inf, math.inf
        root = math.sqrt(max(qb**2 - qa * qc, 0.0))
        return (qb - root) / qa, (qb + root) / qa

    ci, dec = fieller(1 - alpha), fieller(1 - 2 * alpha)
    reason = "" if p_gap < alpha else "the gap is not significant: the share is unbounded"
    row = _row(True, p, q, alpha, diff=num / gap, se=se, df=df, ci_low=ci[0], ci_high=ci[1],
               decision_low=dec[0], decision_high=dec[1])  # fmt: skip
    return row | {"reason": reason}


def combine(verdicts: Sequence[str], p_values: Sequence[float], p_contras: Sequence[float],
            alpha: float, quantifier: str = "every") -> str:  # fmt: skip
    """The verdict of a statement over several pairs (rows).

    ``every`` (an intersection: "the sign methods outperform the non-sign methods"):
    confirmed when every row is confirmed at ``alpha`` (an intersection-union test is level
    alpha without correction); contradicted when a row's contrary survives Holm over the rows
    (the contrary is a union: "some pair is not so"). ``any`` ("often better"): confirmed when
    a row survives Holm, contradicted when every row's contrary holds at alpha. Otherwise
    untestable (``every``: a row without a test; ``any``: every row), underpowered (a margin
    test that could not confirm at this n), or inconclusive.
    """
    v = list(verdicts)
    if not v:
        return INCONCLUSIVE
    ph, qh = holm(p_values), holm(p_contras)
    if quantifier == "every":
        if any(q < alpha and x == CONTRADICTED for q, x in zip(qh, v, strict=True)):
            return CONTRADICTED
        if all(x == CONFIRMED for x in v):
            return CONFIRMED
        if UNTESTABLE in v:
            return UNTESTABLE
        return UNDERPOWERED if UNDERPOWERED in v else INCONCLUSIVE
    if any(p < alpha and x == CONFIRMED for p, x in zip(ph, v, strict=True)):
        return CONFIRMED
    if all(x == CONTRADICTED for x in v):
        return CONTRADICTED
    if all(x == UNTESTABLE for x in v):
        return UNTESTABLE
    return UNDERPOWERED if set(v) <= {UNDERPOWERED, UNTESTABLE} else INCONCLUSIVE
