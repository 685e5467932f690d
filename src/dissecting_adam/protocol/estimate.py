"""How many runs a reproduction is, and what it costs, from timing a few steps here."""

from __future__ import annotations

import time

from ..per_example import backward_with_variance
from ..runner.data import problem_for


def estimate(r, steps_timed: int) -> str:
    """Per problem: ms per step (per-example gradients where a method needs them), the
    number of full runs and probes, and the hours of training they add up to.

    ``r`` is the driver's ``Reproduction``. Evaluation passes are not counted.
    """
    n_seeds = len(r.search.replicate_seeds)
    frac = min(r.search.probe_fraction, 1.0)
    lines, total = [], 0.0
    for problem in dict.fromkeys(p for p, _ in r.pairs):
        specs = [spec for (p, _), spec in r.base.items() if p == problem]
        mb = [s.optimizer.method.per_example for s in specs]
        with problem_for(specs[0]) as prob:
            cost = {False: time_backward(prob, steps_timed, per_example=False)}
            if any(mb):
                cost[True] = time_backward(prob, steps_timed, per_example=True)
        budget = specs[0].num_steps
        # Full-budget runs at least, and a guess of three probes per method.
        per_run_steps = budget * (r.search.points + n_seeds + 3 * frac)
        seconds = sum(cost[m] for m in mb) * per_run_steps
        total += seconds
        runs = len(specs) * (r.search.points + n_seeds)
        extra = f", {cost[True] * 1e3:.1f} with per-example gradients" if any(mb) else ""
        lines.append(
            f"  {problem}: {cost[False] * 1e3:.1f} ms/step{extra} x {budget} steps; about "
            f"{runs} full runs + {3 * len(specs)} probes: ~{seconds / 3600:.2f} h"
        )
    return "\n".join([*lines, f"  total: ~{total / 3600:.2f} h of training (evaluation extra)"])


def time_backward(problem, steps: int, per_example: bool) -> float:
    """Seconds per loss + backward pass (per-example gradients if asked), after a warm-up."""
    model, batches = problem.build_model(0), problem.train_batches(0)
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        if per_example:
            backward_with_variance(problem, model, next(batches))
        else:
            problem.training_loss(model, next(batches)).backward()
    return (time.perf_counter() - start) / steps
