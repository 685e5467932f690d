"""How many runs a reproduction is, and what it costs, from the time of a training step.

``estimate`` times a few steps here (a single run's, and a group's per member when the driver
trains groups) and prints ``project``'s lines; ``project`` (pure) does the arithmetic for
times measured anywhere (``scripts/gpu_check.py`` gives it those of a GPU, and the
throughput of packed groups as the driver runs them).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch

from ..per_example import backward_with_variance
from ..runner import engine
from ..runner.data import problem_for

#: Probes guessed per method with single runs (the walk goes up or down the grid until it
#: is stable); with groups the first round probes ahead, a group's worth (``probes``).
PROBES_PER_METHOD = 3


def estimate(r, steps_timed: int) -> str:
    """Per problem: ms per step (per-example gradients where a method needs them; per member
    of a group when the driver trains groups), the number of full runs and probes, and the
    hours of training they add up to.

    ``r`` is the driver's ``Reproduction``. Evaluation passes are not counted, nor is what
    packing several tasks on one device gains (``make gpu-check`` measures that).
    """
    if steps_timed < 1:
        raise ValueError(f"estimate_steps={steps_timed} must be >= 1; e.g. estimate_steps=3")
    k = members(r)
    seconds, per_example, member = {}, {}, {}
    for problem in dict.fromkeys(p for p, _ in r.pairs):
        specs = [spec for (p, _), spec in r.base.items() if p == problem]
        with problem_for(specs[0]) as prob:
            seconds[problem] = time_backward(prob, steps_timed, per_example=False)
            if any(s.optimizer.method.per_example for s in specs):
                per_example[problem] = time_backward(prob, steps_timed, per_example=True)
            if k > 1 and any(s.optimizer.method.seed_parallel for s in specs):
                member[problem] = time_group(prob, k, steps_timed)
    return project(r, seconds, per_example, member)


def members(r) -> int:
    """The group size the driver trains with (1: single runs)."""
    batching = getattr(r, "batching", None)
    return int(getattr(batching, "members", 1) or 1)


def probes(r) -> int:
    """Probes per method: a guess of three single probes; with groups, the first round's
    probes ahead (the start, the points above it to the cap, three below: at most a group)."""
    k = members(r)
    if k <= 1:
        return PROBES_PER_METHOD
    up = int(getattr(r.search, "up_points", 0) or 0)
    return max(PROBES_PER_METHOD, min(k, 1 + up + PROBES_PER_METHOD))


def projection(
    r,
    step_seconds: Mapping[str, float],
    per_example_seconds: Mapping[str, float] | None = None,
    member_seconds: Mapping[str, float] | None = None,
    packing: Mapping[str, float] | None = None,
) -> list[dict]:
    """Per problem of ``r`` with a step time in ``step_seconds`` (seconds per training step
    of a single run; ``per_example_seconds`` for the methods that need per-example
    gradients): its budget, full runs, probes, and the seconds of training of the whole
    protocol (evaluation extra). Full-budget runs at least, and ``probes(r)`` per method.

    With groups (``r.batching.members`` > 1), ``member_seconds`` gives the seconds per
    member-step of a group of that size (methods that cannot be grouped cost a single run's
    step); ``packing`` the factor by which running the launcher's tasks side by side on one
    device raises throughput (measured; default 1)."""
    per_example_seconds, member_seconds = per_example_seconds or {}, member_seconds or {}
    packing = packing or {}
    n_seeds = len(r.search.replicate_seeds)
    frac = min(r.search.probe_fraction, 1.0)
    k, n_probes = members(r), probes(r)
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
        member = member_seconds.get(problem) if k > 1 else None
        cost = {False: member or step_seconds[problem], True: per_example_seconds.get(problem)}
        gain = float(packing.get(problem) or 1.0)
        budget = specs[0].num_steps
        per_run_steps = budget * (r.search.points + n_seeds + n_probes * frac)
        rows.append(
            {
                "problem": problem,
                "step_s": step_seconds[problem],
                "per_example_step_s": cost[True] if any(mb) else None,
                "members": k,
                "member_step_s": member,
                "packing": gain,
                "num_steps": budget,
                "runs": len(specs) * (r.search.points + n_seeds),
                "probes": n_probes * len(specs),
                "seconds": sum(cost[m] for m in mb) * per_run_steps / gain,
            }
        )
    return rows


def project(
    r,
    step_seconds: Mapping[str, float],
    per_example_seconds: Mapping[str, float] | None = None,
    member_seconds: Mapping[str, float] | None = None,
    packing: Mapping[str, float] | None = None,
) -> str:
    """``projection`` as the lines the driver prints; problems without a step time are
    named as such."""
    found = projection(r, step_seconds, per_example_seconds, member_seconds, packing)
    rows = {row["problem"]: row for row in found}
    lines = []
    for problem in dict.fromkeys(p for p, _ in r.pairs):
        row = rows.get(problem)
        if row is None:
            lines.append(f"  {problem}: no step time")
            continue
        extra = ""
        if row["per_example_step_s"] is not None:
            extra = f", {row['per_example_step_s'] * 1e3:.1f} with per-example gradients"
        if row["member_step_s"] is not None:
            extra += (f", {row['member_step_s'] * 1e3:.1f} per member in groups of "
                      f"{row['members']}")  # fmt: skip
        if row["packing"] != 1.0:
            extra += f", x{row['packing']:.2f} packed"
        lines.append(
            f"  {problem}: {row['step_s'] * 1e3:.1f} ms/step{extra} x {row['num_steps']} steps; "
            f"about {row['runs']} full runs + {row['probes']} probes: "
            f"~{row['seconds'] / 3600:.2f} h"
        )
    total = sum(row["seconds"] for row in rows.values())
    return "\n".join([*lines, f"  total: ~{total / 3600:.2f} h of training (evaluation extra)"])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_backward(problem, steps: int, per_example: bool) -> float:
    """Seconds per loss + backward pass (per-example gradients if asked), after a warm-up."""
    model, batches = problem.build_model(0), problem.train_batches(0)
    device = next(model.parameters()).device
    for i in range(steps + 1):
        if i == 1:
            _sync(device)
            start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        if per_example:
            backward_with_variance(problem, model, next(batches))
        else:
            problem.training_loss(model, next(batches)).backward()
    _sync(device)
    return (time.perf_counter() - start) / steps


def time_group(problem, k: int, steps: int) -> float:
    """Seconds per member-step of the losses + backward pass of a group of ``k`` (the
    runner's ``engine.Stacked``, each member on its own batches), after a warm-up."""
    models = [problem.build_model(seed) for seed in range(k)]
    group = engine.Stacked(problem, models, lambda params, lr: torch.optim.SGD(params, lr=lr),
                           [1e-3] * k, list(range(k)))  # fmt: skip
    iters = [problem.train_batches(seed) for seed in range(k)]
    alive = torch.ones(k, dtype=torch.bool, device=group.device)
    for i in range(steps + 1):
        if i == 1:
            _sync(group.device)
            start = time.perf_counter()
        group.losses([next(it) for it in iters], alive)
    _sync(group.device)
    return (time.perf_counter() - start) / (steps * k)
