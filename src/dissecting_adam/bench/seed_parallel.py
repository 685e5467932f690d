"""Seed-parallel training: K seeds as one batched run against K single runs.

``sequential`` times ``train()`` for the seeds one after another, ``together`` one
``parallel.train_parallel`` run of the same seeds, each for ``steps`` steps with M-SVAG and
checkpoints off; call them inside ``timing.evaluation_off()`` to time training steps only
(everything else, drawing and augmenting the batches included, runs as in a real run).
Model building is not timed.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..optim import MSVAG
from ..runner import loop as train_module
from ..runner import parallel
from ..runner.spec import TrainSettings
from ..runner.store import RunDir
from .timing import sync

PROBLEMS = ("fmnist_2c2d", "cifar10_3c3d")


def settings(steps: int) -> TrainSettings:
    return TrainSettings(num_steps=steps, eval_every=steps, checkpoint_every=None, progress="off")


def runs(folder: Path, seeds) -> list[RunDir]:
    out = []
    for seed in seeds:
        run = RunDir(folder / f"seed={seed}")
        run.path.mkdir(parents=True, exist_ok=True)
        out.append(run)
    return out


def sequential(problem, seeds, steps: int, folder: Path, device: str) -> float:
    """Seconds for K single runs, one after another (model building excluded)."""
    total = 0.0
    for seed, run in zip(seeds, runs(folder, seeds), strict=True):
        model = problem.build_model(seed)
        opt = MSVAG(model.parameters(), lr=1e-3)
        sched = problem.lr_scheduler(opt)
        sync(device)
        t0 = time.perf_counter()
        train_module.train(problem, model, opt, sched, settings(steps), run)
        sync(device)
        total += time.perf_counter() - t0
    return total


def together(problem, seeds, steps: int, folder: Path, device: str) -> float:
    """Seconds for one seed-parallel run of all K seeds."""
    models = [problem.build_model(seed) for seed in seeds]
    make = lambda params: MSVAG(params, lr=1e-3)  # noqa: E731
    sync(device)
    t0 = time.perf_counter()
    parallel.train_parallel(problem, models, make, settings(steps), seeds, runs(folder, seeds))
    sync(device)
    return time.perf_counter() - t0
