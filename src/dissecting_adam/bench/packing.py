"""Runs per hour on one device: several runs at once (packing) and K seeds as one run.

``packed`` trains a batch of short runs with the driver's packing launcher
(``protocol.launch.Packed``: ``jobs_per_device`` worker processes on the device) and counts
the runs that finished per hour of wall time, worker start-up included. ``seed_groups``
times one seed-parallel run of K seeds (``seed_parallel.together``; K = 1 is a single run,
``seed_parallel.sequential``) and turns it into seed-runs per hour. Both extrapolate to the
problem's paper budget from the training time per step (evaluation excluded).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from ..runner.spec import RunSpec
from ..runner.store import FINISHED
from .seed_parallel import sequential, together
from .timing import NEVER, Deadline, evaluation_off


def per_hour(runs: int, seconds: float) -> float:
    return runs * 3600.0 / seconds


def packed(base: RunSpec, jobs_per_device: int, runs: int, device: str, folder: Path) -> dict:
    """``runs`` runs of ``base`` (seeds 0..runs-1, results under ``folder``) through
    ``Packed(jobs_per_device, (device,))``: wall seconds, runs finished, runs per hour, the
    median training seconds of a run, and the training steps per second of the device."""
    from ..protocol.launch import Packed

    specs = [base.derive(seed=s, results_root=str(folder), force=True) for s in range(runs)]
    launcher = Packed(jobs_per_device=jobs_per_device, devices=(device,))
    t0 = time.perf_counter()
    launcher(specs)
    wall = time.perf_counter() - t0
    summaries = [s.run_dir().summary() or {} for s in specs]
    done = [s for s in summaries if s.get("status") in FINISHED]
    train_s = sorted(s["train_time_s"] for s in done if s.get("train_time_s"))
    steps = sum(s.get("steps_done", 0) for s in done)
    return {
        "jobs_per_device": jobs_per_device,
        "runs": runs,
        "finished": len(done),
        "wall_s": wall,
        "runs_per_hour": per_hour(len(done), wall),
        "run_train_s": train_s[len(train_s) // 2] if train_s else None,
        "steps_per_s": steps / wall,
    }


def seed_groups(
    problem, ks, steps: int, folder: Path, device: str, deadline: Deadline = NEVER
) -> Iterator[dict]:
    """Per K, as it is measured: seconds per training step per seed, and the speed-up over
    K = 1 (a single run, measured first in the same process). Stops before a K once
    ``deadline`` has passed."""
    with evaluation_off():
        sequential(problem, [0], 2, folder / "warm", device)  # warm-up
        together(problem, [0, 1], 2, folder / "warm", device)
        single = sequential(problem, [0], steps, folder / "k1", device) / steps
        for i, k in enumerate(ks):
            if i > 0 and deadline.expired():
                return
            if k == 1:
                per = single
            else:
                per = together(problem, list(range(k)), steps, folder / f"k{k}", device)
                per /= k * steps
            yield {"K": k, "seed_step_s": per, "speed_up": single / per}
