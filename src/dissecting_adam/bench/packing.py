"""Runs per hour on one device: several tasks at once (packing), and K runs as one group.

``packed`` trains a batch of short runs with the driver's packing launcher
(``protocol.launch.Packed``: ``jobs_per_device`` worker processes on the device, each task
a group of ``members`` runs or a single run) and gives two throughputs: over the wall time
(start-up included: a worker builds each run's problem and data before its first step),
and at steady state, from the runs' own training time (first to last step, as the runs
record it): with N tasks side by side, N x member-steps / the tasks' training seconds.
Short runs are start-up bound, long paper runs are not, so the projection uses the second.
Inside ``warm_workers`` the launcher's workers are started (and import torch, initialise
CUDA) before the timing, as the driver keeps them for a whole reproduction.
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


def fitting_batch(spec: RunSpec) -> int | None:
    """The training examples of the run's generated data set when there are fewer than its
    batch size (the runner's stand-ins are small), else None (real data: None)."""
    from ..runner.data import problem_for

    if spec.data_variant != "synthetic":
        return None
    with problem_for(spec, "cpu") as problem:
        images = getattr(problem.data, "train_images", None)
        n = None if images is None else int(images.shape[0])
    return n if n is not None and n < spec.problem_config.batch_size else None


def packed(base: RunSpec, jobs_per_device: int, runs: int, device: str, folder: Path,
           members: int = 1, launcher=None) -> dict:  # fmt: skip
    """``runs`` runs of ``base`` (seeds 0..runs-1, results under ``folder``) through
    ``Packed(jobs_per_device, (device,))``, in groups of ``members`` (``launcher``: one from
    ``warm_workers``, else a new one whose start-up is timed too): wall seconds, runs
    finished, runs per hour, the median training seconds of a run, the device's
    (member-)steps per second over the wall time and at steady state (``steady``), and the
    share of the wall time spent outside training (``startup_share``)."""
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
    side_by_side = min(jobs_per_device, -(-runs // members))
    return {
        "jobs_per_device": jobs_per_device,
        "members": members,
        "runs": runs,
        "finished": len(done),
        "wall_s": wall,
        "runs_per_hour": per_hour(len(done), wall),
        "run_train_s": train_s[len(train_s) // 2] if train_s else None,
        "steps_per_s": steps / wall,
        **steady(steps, train_s, members, side_by_side, wall),
    }


def steady(steps: int, train_s: list[float], members: int, side_by_side: int,
           wall: float) -> dict:  # fmt: skip
    """Member-steps per second at steady state: ``side_by_side`` tasks each training for
    its runs' ``train_s`` (a group's members all record the group's time), and the share of
    the wall time a task spent outside training."""
    task_s = sum(train_s) / members  # the tasks' training seconds
    if not steps or task_s <= 0:
        return {"steady_steps_per_s": None, "steady_step_ms": None, "startup_share": None}
    rate = side_by_side * steps / task_s
    return {
        "steady_steps_per_s": rate,
        "steady_step_ms": 1e3 / rate,
        "startup_share": max(1.0 - task_s / side_by_side / wall, 0.0),
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
