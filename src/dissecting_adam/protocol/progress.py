"""Where a reproduction is: runs done per phase, and an ETA for the whole of it that
improves as runs finish (training steps still to run / steps per second measured so far).

The ETA is an estimate from what is known when it is printed: a search that extends below
its window, or a stable probe whose whole run diverges, adds runs that cannot be known in
advance, and replicates already in the store are counted as still to run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .. import methods


def remaining_steps(r, states: dict) -> int:
    """Training steps the reproduction still needs at least, from what is known now."""
    total = 0
    for pair, st in states.items():
        base = r.base[pair]
        budget, seeds = base.num_steps, len(r.search.replicate_seeds)
        probe = r.search.probe_steps(budget) or budget
        if st.top is None:  # a probe at least, then the search window
            total += probe + r.search.points * budget
        else:
            search = r.search.search(methods.get(pair[1]), st.top)
            known = st.outcomes
            left = [lr for lr in search.searched(known) if lr not in known]
            if search.largest_stable(known) is None and search.lrs:
                left = left or [None]
            total += len(left) * budget
        total += seeds * budget  # replicates (those already stored are few until the end)
    return total


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Tracker:
    """Prints one line when a phase starts and one as each part of it ends."""

    def __init__(self, r, out: Callable[[str], None] = print):
        self.r, self.out = r, out
        self.t0 = time.perf_counter()
        self.steps = 0  # training steps finished in this session
        self.states: dict = {}

    def phase(self, name: str, specs, states: dict) -> Callable[[int], None]:
        """Announce ``name`` with its runs; return the launcher's ``on_done`` callback."""
        self.states = states
        steps = [spec.train.end for spec in specs]
        mean = sum(steps) / max(1, len(steps))
        done = [0]
        self.out(f"{name}: {len(specs)} run(s), {sum(steps):,} steps")

        def on_done(n: int) -> None:
            done[0] += n
            self.steps += round(n * mean)
            elapsed = time.perf_counter() - self.t0
            rate = self.steps / max(elapsed, 1e-9)
            left = max(0.0, remaining_steps(self.r, self.states) - done[0] * mean)
            eta = _duration(left / rate) if rate > 0 else "unknown"
            self.out(f"  {name}: {done[0]}/{len(specs)} run(s) done; {_duration(elapsed)} "
                     f"so far; ETA for the whole reproduction ~{eta}")  # fmt: skip

        return on_done
