"""The paper's step-size protocol as pure logic: grid, stability probe, selection, extension.

Balles & Hennig (§6.1) tuned the step size alpha of each method "by first finding the
maximal stable step size by trial and error, then searching downwards", and kept the one
with the best test accuracy within the step budget. Automated here:

1. ``grid``: 1, 3 and 6 times powers of ten (configurable), largest first.
2. Probe (``Probe``): from the method's start, up the grid while runs are stable (to a
   cap, ``up_points`` grid points above the start), else down until one is; the last
   stable one is the largest stable step size. Stable means not diverged *and* made
   progress (``Outcome.stable``).
3. Search: it and the next ``points - 1`` grid points below it, each trained with one
   search seed for the full budget (the probe's non-diverged run counts as one).
4. Select: the best metric at the end of the budget (``mode: final``) or over the
   evaluations within it (``best``); diverged runs rank last; within a tolerance the
   larger step size wins (and the tie is reported).
5. Extend: if the winner is the lowest point searched, search further down, up to
   ``max_extensions`` more points. A winner still on the lower edge after them, or on
   the grid's last point (``grid.lo``), is reported by ``lower_edge`` (the driver stops
   that pair: its optimum is not bracketed).

``StepSizeSearch.next_lr(outcomes)`` is a pure function of the outcomes so far, so a
driver can restart at any time: finished runs come back from the results store and the
search continues where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace


def grid(lo: float, hi: float, mantissas: Sequence[float] = (1.0, 3.0, 6.0)) -> list[float]:
    """All m * 10^k within [lo, hi], largest first, rounded to 12 significant digits."""
    if not (0 < lo <= hi) or not mantissas or not all(0 < m < 10 for m in mantissas):
        raise ValueError(f"need 0 < lo <= hi and mantissas in (0, 10); got {lo}, {hi}, {mantissas}")
    values = set()
    for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        for m in mantissas:
            x = float(f"{m * 10.0**k:.12g}")
            if lo * (1 - 1e-12) <= x <= hi * (1 + 1e-12):
                values.add(x)
    return sorted(values, reverse=True)


@dataclass(frozen=True)
class Outcome:
    """What the search needs to know about one finished run."""

    status: str  # "completed", "diverged" or "failed"
    metric: float | None = None  # the selection metric (None if the run has none)
    progressed: bool | None = None  # final training loss < progress_ratio x initial one

    @property
    def stable(self) -> bool:
        """Not diverged, and not stuck: a saturated network whose loss never falls is not
        a stable step size (None, progress unknown, counts as progress)."""
        return self.status != "diverged" and self.progressed is not False


@dataclass(frozen=True)
class Probe:
    """The search for the largest stable step size on ``lrs`` (largest first).

    From ``lrs[start]`` (the method's start): while stable, go up one grid point at a time
    (``lrs[0]`` is the cap); if the start is not stable, go down until a step size is.
    """

    lrs: tuple[float, ...]
    start: int = 0

    def _walk(self, outcomes: Mapping[float, Outcome]) -> tuple[float | None, int | None]:
        """(the next lr to probe, None) or (None, index of the largest stable lr)."""
        lrs, s = self.lrs, self.start
        if lrs[s] not in outcomes:
            return lrs[s], None
        if outcomes[lrs[s]].stable:
            for i in range(s, 0, -1):  # up while stable
                above = lrs[i - 1]
                if above not in outcomes:
                    return above, None
                if not outcomes[above].stable:
                    return None, i
            return None, 0
        for i in range(s + 1, len(lrs)):  # down until stable
            if lrs[i] not in outcomes:
                return lrs[i], None
            if outcomes[lrs[i]].stable:
                return None, i
        return None, len(lrs)  # nothing is stable

    def next_lr(self, outcomes: Mapping[float, Outcome]) -> float | None:
        return self._walk(outcomes)[0]

    def top(self, outcomes: Mapping[float, Outcome]) -> int | None:
        """Index of the largest stable lr (``len(lrs)``: none), once the probe is done."""
        return self._walk(outcomes)[1]

    def cap_reached(self, outcomes: Mapping[float, Outcome]) -> bool:
        """The cap itself was stable: a larger step size may be stable (and better)."""
        return self.top(outcomes) == 0


@dataclass(frozen=True)
class Selection:
    lr: float
    metric: float
    ranking: list[tuple[float, str, float | None]] = field(default_factory=list)
    tie_with: list[float] = field(default_factory=list)  # smaller lrs within the tolerance
    on_lower_edge: bool = False


@dataclass(frozen=True)
class StepSizeSearch:
    """The search over one (problem, optimizer): which lr to run next, and which to keep.

    Args:
        lrs: the grid, largest first (see ``grid``).
        points: how many grid points to search from the largest stable one down.
        maximize: True for accuracy, False for a loss.
        tolerance: metrics closer than this to the best count as ties (larger lr wins).
        max_extensions: how many points to add below when the winner is on the lower edge.
    """

    lrs: tuple[float, ...]
    points: int = 4
    maximize: bool = True
    tolerance: float = 0.0
    max_extensions: int = 3

    def __post_init__(self):
        if list(self.lrs) != sorted(self.lrs, reverse=True) or len(set(self.lrs)) != len(self.lrs):
            raise ValueError("lrs must be distinct and sorted largest first")
        if self.points < 1 or self.max_extensions < 0 or not self.tolerance >= 0:
            raise ValueError("points >= 1, max_extensions >= 0 and tolerance >= 0 are required")

    # --- phases -------------------------------------------------------------------------
    def largest_stable(self, outcomes: Mapping[float, Outcome]) -> int | None:
        """Index of the largest stable lr, once the probe has found it."""
        for i, lr in enumerate(self.lrs):
            if lr not in outcomes:
                return None
            if outcomes[lr].stable:
                return i
        return None

    def searched(self, outcomes: Mapping[float, Outcome]) -> list[float]:
        """The lrs of the search window as far as it is known (probe excluded)."""
        top = self.largest_stable(outcomes)
        if top is None:
            return []
        window = list(self.lrs[top : top + self.points])
        extensions = 0
        while extensions < self.max_extensions and all(lr in outcomes for lr in window):
            best = self._select(window, outcomes)
            below = top + len(window)
            if best is None or best.lr != window[-1] or below >= len(self.lrs):
                break
            window.append(self.lrs[below])
            extensions += 1
        return window

    def next_lr(self, outcomes: Mapping[float, Outcome]) -> float | None:
        """The next lr to run, or None when the search is complete (or the grid exhausted)."""
        for lr in self.lrs:  # walk down until a run is stable
            if lr not in outcomes:
                return lr
            if outcomes[lr].stable:
                break
        else:
            return None  # every grid point diverged
        for lr in self.searched(outcomes):
            if lr not in outcomes:
                return lr
        return None

    def select(self, outcomes: Mapping[float, Outcome]) -> Selection | None:
        """The selected lr once the search is complete, else None."""
        if self.next_lr(outcomes) is not None:
            return None
        window = self.searched(outcomes)
        return self._select(window, outcomes) if window else None

    def lower_edge(self, outcomes: Mapping[float, Outcome]) -> tuple[bool, int] | None:
        """Why a complete search kept a winner on the lower edge of its window, else None:
        (the window reached the grid's last point, ``grid.lo``; how many points it was
        extended by, ``max_extensions`` unless the grid ended first)."""
        sel = self.select(outcomes)
        if sel is None or not sel.on_lower_edge:
            return None
        window = self.searched(outcomes)
        top = self.lrs.index(window[0])
        return window[-1] == self.lrs[-1], len(window) - min(self.points, len(self.lrs) - top)

    # --- ranking ------------------------------------------------------------------------
    def _key(self, lr: float, outcome: Outcome) -> tuple:
        ok = outcome.status == "completed" and outcome.metric is not None
        ok = ok and math.isfinite(outcome.metric)
        value = outcome.metric if ok else 0.0
        return (ok, value if self.maximize else -value, lr)

    def _select(self, window: list[float], outcomes: Mapping[float, Outcome]) -> Selection | None:
        ranked = sorted(window, key=lambda lr: self._key(lr, outcomes[lr]), reverse=True)
        best = ranked[0]
        best_outcome = outcomes[best]
        if not self._key(best, best_outcome)[0]:
            return None  # nothing in the window completed
        # Ties: the largest lr whose metric is within the tolerance of the best.
        ties = [
            lr
            for lr in ranked
            if self._key(lr, outcomes[lr])[0]
            and abs(outcomes[lr].metric - best_outcome.metric) <= self.tolerance
        ]
        chosen = max(ties)
        return Selection(
            lr=chosen,
            metric=outcomes[chosen].metric,
            ranking=[(lr, outcomes[lr].status, outcomes[lr].metric) for lr in ranked],
            tie_with=sorted((lr for lr in ties if lr != chosen), reverse=True),
            on_lower_edge=chosen == window[-1],
        )


def select_with(
    search: StepSizeSearch,
    outcomes: Mapping[float, Outcome],
    metrics: Mapping[float, float | None],
) -> dict | None:
    """What ``search`` picks from the same runs when each run's metric is ``metrics[lr]``
    (the other mode's: best over the evaluations instead of final, or back): ``lr`` and
    ``metric``; ``complete`` False, with ``needs`` the step size it would have run next,
    when that search would have gone on (an extension below) and the pick is among the
    runs there are. None when none of its window completed."""
    alt = {lr: replace(out, metric=metrics.get(lr)) for lr, out in outcomes.items()}
    needs = search.next_lr(alt)
    window = [lr for lr in search.searched(alt) if lr in alt]
    sel = search._select(window, alt) if window else None
    if sel is None:
        return None
    return {"lr": sel.lr, "metric": sel.metric, "complete": needs is None, "needs": needs}
