"""How many runs a reproduction is, and what it costs, from the time of a training step.

``estimate`` times a few steps here and prints ``project``'s lines; ``project`` (pure) does
the arithmetic for step times measured anywhere (``scripts/gpu_check.py`` gives it those of
a GPU).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from ..per_example import backward_with_variance
from ..runner.data import problem_for

#: Probes guessed per method (the search goes up or down the grid until it is stable).
PROBES_PER_METHOD = 3


def estimate(r, steps_timed: int) -> str:
    """Per problem: ms per step (per-example gradients where a method needs them), the
    number of full runs and probes, and the hours of training they add up to.

    ``r`` is the driver's ``Reproduction``. Evaluation passes are not counted.
    """
    seconds, per_example = {}, {}
    for problem in dict.fromkeys(p for p, _ in r.pairs):
        specs = [spec for (p, _), spec in r.base.items() if p == problem]
        with problem_for(specs[0]) as prob:
            seconds[problem] = time_backward(prob, steps_timed, per_example=False)
            if any(s.optimizer.method.per_example for s in specs):
                per_example[problem] = time_backward(prob, steps_timed, per_example=True)
    return project(r, seconds, per_example)


def projection(
    r, step_seconds: Mapping[str, float], per_example_seconds: Mapping[str, float] | None = None
) -> list[dict]:
    """Per problem of ``r`` with a step time in ``step_seconds`` (seconds per training step;
    ``per_example_seconds`` for the methods that need per-example gradients): its budget,
    full runs, probes, and the seconds of training of the whole protocol (evaluation
    extra). Full-budget runs at least, and a guess of three probes per method."""
    per_example_seconds = per_example_seconds or {}
    n_seeds = len(r.search.replicate_seeds)
    frac = min(r.search.probe_fraction, 1.0)
    rows = []
    for problem in dict.fromkeys(p for p, _ in r.pairs):
        if problem not in step_seconds:
            continue
        specs = [spec for (p, _), spec in r.base.items() if p == problem]
        mb = [s.optimizer.method.per_example for s in specs]
        if any(mb) and problem not in per_example_seconds:
            raise ValueError(
                f"{problem}: a method needs per-example gradients; give their "
                "step time in per_example_seconds"
            )
        cost = {False: step_seconds[problem], True: per_example_seconds.get(problem)}
        budget = specs[0].num_steps
        per_run_steps = budget * (r.search.points + n_seeds + PROBES_PER_METHOD * frac)
        rows.append(
            {
                "problem": problem,
                "step_s": cost[False],
                "per_example_step_s": cost[True] if any(mb) else None,
                "num_steps": budget,
                "runs": len(specs) * (r.search.points + n_seeds),
                "probes": PROBES_PER_METHOD * len(specs),
                "seconds": sum(cost[m] for m in mb) * per_run_steps,
            }
        )
    return rows


def project(
    r, step_seconds: Mapping[str, float], per_example_seconds: Mapping[str, float] | None = None
) -> str:
    """``projection`` as the lines the driver prints; problems without a step time are
    named as such."""
    rows = {row["problem"]: row for row in projection(r, step_seconds, per_example_seconds)}
    lines = []
    for problem in dict.fromkeys(p for p, _ in r.pairs):
        row = rows.get(problem)
        if row is None:
            lines.append(f"  {problem}: no step time")
            continue
        extra = ""
        if row["per_example_step_s"] is not None:
            extra = f", {row['per_example_step_s'] * 1e3:.1f} with per-example gradients"
        lines.append(
            f"  {problem}: {row['step_s'] * 1e3:.1f} ms/step{extra} x {row['num_steps']} steps; "
            f"about {row['runs']} full runs + {row['probes']} probes: "
            f"~{row['seconds'] / 3600:.2f} h"
        )
    total = sum(row["seconds"] for row in rows.values())
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
