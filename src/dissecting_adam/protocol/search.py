"""The search settings (``conf/search/<name>.yaml``) and the protocol's pieces they build.

``SearchSettings`` checks every setting (one line each: the setting, the bad value, the
fix) and builds the pure step-size logic of ``stepsize`` (grid, probe, search, selection)
for each method; those names are importable from here too, and ``metric_from`` reads a
run's selection metric in either ``mode``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from .stepsize import (  # noqa: F401 - the protocol's names, importable from here
    Outcome,
    Probe,
    Selection,
    StepSizeSearch,
    grid,
    select_with,
)


def _number(x) -> bool:
    """A finite real number (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _integer(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _sequence(x) -> bool:
    return isinstance(x, Sequence) and not isinstance(x, str)


def _show(value) -> str:
    """A value as it would be written in an override."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


#: metric -> (evaluation split, column, higher is better)
METRICS = {"test_accuracy": ("test", "accuracy", True), "train_loss": ("train_eval", "loss", False)}


@dataclass(frozen=True)
class SearchSettings:
    """One search profile (``conf/search/<name>.yaml``): the grid, the phases, the seeds.

    ``grid_hi`` overrides, per method, where the probe starts; by default it is the
    method's registry entry (``Method.grid_top[name]``). Every setting is checked when the
    settings are made (``problems``: a ValueError naming the setting, its value and the
    fix), and ``check(method)`` checks one method's grid, so that a bad value stops a
    reproduction before any run, never in the middle of it.
    """

    name: str
    mantissas: tuple[float, ...] = (1.0, 3.0, 6.0)
    lo: float = 1e-5
    grid_hi: Mapping[str, float] = field(default_factory=dict)
    up_points: int = 6  # how far above the start the probe may go (grid points)
    probe_fraction: float = 0.1
    progress_ratio: float | None = 1.0  # stable: final training loss < ratio x initial one
    # (None: no progress rule; the smoke profile's runs of a few steps)
    points: int = 4
    max_extensions: int = 3
    metric: str = "test_accuracy"
    mode: str = "final"
    tolerance: float = 0.0
    search_seed: int = 100  # outside the replicate seeds: selection and replicates independent
    replicate_seeds: tuple[int, ...] = tuple(range(10))

    def __post_init__(self):
        for problem in self.problems():
            raise ValueError(problem)

    def problems(self) -> list[str]:
        """What is wrong with these settings, one line each: ``search.<setting>=<value>
        <what is wrong>; <fix>`` (empty when nothing is)."""
        out = []

        def bad(setting: str, value, what: str, fix: str) -> None:
            out.append(f"search.{setting}={_show(value)} {what}; {fix}")

        if not isinstance(self.name, str) or not self.name:
            bad("name", self.name, "is not a name", "name the search profile, e.g. paper")
        m = self.mantissas
        if not _sequence(m) or not m:
            bad("grid.mantissas", m, "is not a list of mantissas", "e.g. [1, 3, 6]")
        elif not all(_number(x) and 0 < x < 10 for x in m):
            bad("grid.mantissas", m, "must all be numbers in (0, 10)", "e.g. [1, 3, 6]")
        if not _number(self.lo) or not self.lo > 0:
            bad("grid.lo", self.lo, "must be a positive, finite step size", "e.g. 1e-5")
        if not isinstance(self.grid_hi, Mapping):
            bad("grid.hi", self.grid_hi, "is not a mapping", "e.g. {msgd: 30.0}, or {}")
        else:
            for name, hi in self.grid_hi.items():
                if not _number(hi) or not hi > 0:
                    bad(f"grid.hi.{name}", hi, "must be a positive, finite step size",
                        "e.g. 30.0, or leave it out for the registry's start")  # fmt: skip
        if not _integer(self.up_points) or self.up_points < 0:
            bad("grid.up_points", self.up_points, "must be an integer >= 0",
                "e.g. 6 (0: the probe never goes above the start)")  # fmt: skip
        if not _number(self.probe_fraction) or not 0 < self.probe_fraction <= 1:
            bad("probe_fraction", self.probe_fraction, "must be in (0, 1]",
                "e.g. 0.1 (1: probes are whole runs)")  # fmt: skip
        ratio = self.progress_ratio
        if ratio is not None and (not _number(ratio) or not 0 < ratio <= 1):
            bad("progress_ratio", ratio, "must be in (0, 1] or null",
                "e.g. 1.0 (null: no progress rule)")  # fmt: skip
        if not _integer(self.points) or self.points < 1:
            bad("points", self.points, "must be an integer >= 1", "e.g. 4")
        if not _integer(self.max_extensions) or self.max_extensions < 0:
            bad("max_extensions", self.max_extensions, "must be an integer >= 0", "e.g. 3")
        if self.metric not in METRICS:
            bad("metric", self.metric, "is not a metric", f"choose one of {', '.join(METRICS)}")
        if self.mode not in ("final", "best"):
            bad("mode", self.mode, "is not a mode", "choose final or best")
        if not _number(self.tolerance) or self.tolerance < 0:
            bad("tolerance", self.tolerance, "must be a finite number >= 0",
                "e.g. 0.0 (metrics this close to the best tie)")  # fmt: skip
        if not _integer(self.search_seed):
            bad("search_seed", self.search_seed, "is not an integer", "e.g. 100")
        seeds = self.replicate_seeds
        if not _sequence(seeds) or not seeds:
            bad("replicate_seeds", seeds, "is not a list of seeds", "give one or more, e.g. [0, 1]")
        elif not all(_integer(x) for x in seeds):
            bad("replicate_seeds", seeds, "must all be integers", "e.g. [0, 1, 2]")
        elif len(set(seeds)) != len(seeds):
            bad("replicate_seeds", seeds, "repeats a seed", "give each seed once")
        return out

    def check(self, method) -> None:
        """A ValueError (one line) when ``method`` has no grid on these settings: no start
        for this profile, or a start below ``grid.lo``."""
        top = self.grid_top(method)
        if top is None:
            raise ValueError(
                f"search '{self.name}' has no grid start for optimizer={method.name}: add "
                f"'{self.name}' to its registry entry's grid_top (dissecting_adam.methods) "
                f"or set search.grid.hi.{method.name}=<lr> in conf/search/{self.name}.yaml"
            )
        if top < self.lo:
            raise ValueError(
                f"search.grid.lo={_show(self.lo)} is above optimizer={method.name}'s grid "
                f"start {_show(top)}; lower search.grid.lo or set "
                f"search.grid.hi.{method.name}=<lr> above it"
            )
        try:
            self.lrs(method)
        except (ValueError, OverflowError):
            raise ValueError(
                f"search.grid.up_points={self.up_points} puts the grid's cap above any float "
                f"(optimizer={method.name} starts at {_show(top)}); use fewer, e.g. 6"
            ) from None

    @property
    def maximize(self) -> bool:
        return METRICS[self.metric][2]

    def grid_top(self, method) -> float | None:
        """Where ``method`` (a ``methods.Method``) starts on this profile's grid, or None."""
        if method.name in self.grid_hi:
            return float(self.grid_hi[method.name])
        top = method.grid_top.get(self.name)
        return None if top is None else float(top)

    def lrs(self, method) -> tuple[float, ...]:
        """``method``'s grid, largest first: the cap (``up_points`` above its start) to lo."""
        start = self.grid_top(method)
        decades = math.ceil(self.up_points / max(1, len(self.mantissas))) + 1
        full = grid(self.lo, start * 10.0**decades, self.mantissas)
        i = min(range(len(full)), key=lambda j: abs(math.log(full[j] / start)))
        return tuple(full[max(0, i - self.up_points) :])

    def probe(self, method) -> Probe:
        lrs = self.lrs(method)
        start = min(range(len(lrs)), key=lambda j: abs(math.log(lrs[j] / self.grid_top(method))))
        return Probe(lrs, start)

    def search(self, method, top: int = 0) -> StepSizeSearch:
        """The search over ``method``'s grid, from grid index ``top`` (of ``lrs``) down."""
        return StepSizeSearch(
            self.lrs(method)[top:],
            points=self.points,
            maximize=self.maximize,
            tolerance=self.tolerance,
            max_extensions=self.max_extensions,
        )

    def probe_steps(self, budget: int) -> int | None:
        """Where a stability probe stops (None: probes are whole runs): exactly
        ``probe_fraction`` of the budget, rounded half up to a whole step (the fraction as
        written: 0.25 of 1,000 is 250, 0.125 of 100 is 13), at least 1; None when that is
        the whole budget. The runner evaluates a probe at its last step whatever the
        interval, so every probe has a final training loss to judge its progress by.

        A whole run starts from its probe's checkpoint only where the probe stopped at one
        of the whole run's evaluation steps (``resumes_from_probe``): elsewhere the probe's
        extra evaluation would be in the whole run's metrics, which would then differ from
        a run never stopped, so that whole run trains from scratch."""
        if self.probe_fraction >= 1:
            return None
        exact = Decimal(repr(float(self.probe_fraction))) * budget
        steps = max(1, int(exact.to_integral_value(rounding=ROUND_HALF_UP)))
        return None if steps >= budget else steps

    def resumes_from_probe(self, budget: int, eval_every: int) -> bool:
        """Whether a whole run of ``budget`` steps (evaluated every ``eval_every``) may start
        from its probe: the probe stops early, at one of the run's evaluation steps."""
        stop = self.probe_steps(budget)
        return stop is not None and stop % eval_every == 0


def metric_from(summary: dict, rows: Sequence[Mapping], metric: str, mode: str) -> float | None:
    """A finished run's selection ``metric`` in ``mode``: ``final``, its value at the end of
    the budget (the summary); ``best``, the best finite value over its evaluations after
    step 0 (``rows``, its metrics): the maximum of an accuracy, the minimum of a loss. Step
    0 is left out: every step size starts from the same model there, so it says nothing
    about the step size (and would tie runs that never beat it)."""
    split, column, higher = METRICS[metric]
    if mode == "final":
        value = (summary.get("final") or {}).get(f"{split}_{column}")
        return None if value is None else float(value)
    values = [
        float(row[column])
        for row in rows
        if row.get("split") == split and row.get("step", 0) > 0 and _number(row.get(column))
    ]
    if not values:
        return None
    return max(values) if higher else min(values)
