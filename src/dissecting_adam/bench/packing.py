"""Runs per hour on one device: several tasks at once (packing), and K runs as one group.

``packed`` trains a batch of short runs with the driver's packing launcher
(``protocol.launch.Packed``: ``jobs_per_device`` worker processes on the device, each task
a group of ``members`` runs or a single run) and counts the runs that finished per hour of
wall time. Inside ``warm_workers`` the launcher's workers are started (and import torch,
initialise CUDA) before the timing, as the driver keeps them for a whole reproduction.
``seed_groups`` times one group of K (``seed_parallel.member_cost``: a single run and a group
back to back) and turns it into runs per hour. Both extrapolate to the problem's paper
budget from the training time per step (evaluation excluded).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

from ..runner.spec import RunSpec
from ..runner.store import FINISHED
from .seed_parallel import member_cost, sequential, together
from .timing import NEVER, Deadline, evaluation_off


def per_hour(runs: int, seconds: float) -> float:
    return runs * 3600.0 / seconds


@contextlib.contextmanager
def warm_workers(base: RunSpec, width: int, device: str, folder: Path) -> Iterator:
    """A ``Packed`` launcher whose ``width`` worker processes have started (one 2-step run
    each) and are kept until the block ends; pass it to ``packed``."""
    from ..protocol.launch import Packed

    launcher = Packed(jobs_per_device=width, devices=(device,))
    with launcher.kept():
        warm = [base.derive(seed=1000 + i, num_steps=2, results_root=str(folder), force=True)
                for i in range(width)]  # fmt: skip
        launcher(warm)
        yield launcher


def packed(base: RunSpec, jobs_per_device: int, runs: int, device: str, folder: Path,
           members: int = 1, launcher=None) -> dict:  # fmt: skip
    """``runs`` runs of ``base`` (seeds 0..runs-1, results under ``folder``) through
    ``Packed(jobs_per_device, (device,))``, in groups of ``members`` (``launcher``: one from
    ``warm_workers``, else a new one whose start-up is timed too): wall seconds, runs
    finished, runs per hour, the median training seconds of a run, and the training
    (member-)steps per second of the device."""
    from ..protocol.launch import Packed

    specs = [base.derive(seed=s, results_root=str(folder), force=True) for s in range(runs)]
    if launcher is None:
        launcher = Packed(jobs_per_device=jobs_per_device, devices=(device,))
    # A copy with other settings shares the original's kept worker pool.
    launcher = dataclasses.replace(
        launcher, jobs_per_device=jobs_per_device, parallel_seeds=members
    )
    t0 = time.perf_counter()
    launcher(specs)
    wall = time.perf_counter() - t0
    summaries = [s.run_dir().summary() or {} for s in specs]
    done = [s for s in summaries if s.get("status") in FINISHED]
    train_s = sorted(s["train_time_s"] for s in done if s.get("train_time_s"))
    steps = sum(s.get("steps_done", 0) for s in done)
    return {
        "jobs_per_device": jobs_per_device,
        "members": members,
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
    """Per K > 1, as it is measured: seconds per training step of a single run and per
    member-step of a group of K, timed back to back, their ratio (``cost``; the speed-up is
    its inverse). Stops before a K once ``deadline`` has passed."""
    with evaluation_off():
        sequential(problem, [0], 2, folder / "warm", device)  # warm-ups
        together(problem, [0, 1], 2, folder / "warm", device)
        for i, k in enumerate(x for x in ks if x > 1):
            if i > 0 and deadline.expired():
                return
            row = member_cost(problem, k, steps, folder / f"k{k}", device)
            yield {**row, "seed_step_s": row["member_s"], "speed_up": 1.0 / row["cost"]}
