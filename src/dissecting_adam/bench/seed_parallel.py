"""Groups: K runs of one problem as one batched computation against single runs.

``sequential`` times ``loop.train_single`` for the seeds one after another, ``together``
one ``loop.train_group`` of the same seeds (the runner's ``engine.Stacked``), each for
``steps`` steps with M-SVAG and checkpoints off; call them inside
``timing.evaluation_off()`` to time training steps only (everything else, drawing and
augmenting the batches included, runs as in a real run). Model building is not timed.
``member_cost`` is what the driver's choice rests on: the seconds per member-step of a group
of K over those of a single run (below 1: the group pays; the issue's targets on an H200 are
``TARGETS``). Groups work on every problem, so ``PROBLEMS`` is all four.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..optim import MSVAG
from ..runner import loop
from ..runner.spec import TrainSettings
from ..runner.store import RunDir
from .timing import sync

PROBLEMS = ("fmnist_2c2d", "cifar10_3c3d", "cifar100_wrn404", "tolstoi_char_rnn")
#: Per member-step cost of a group of 10 over a single run's step, on an H200 (issue 20).
TARGETS = {"fmnist_2c2d": 0.25, "cifar10_3c3d": 0.25, "cifar100_wrn404": 0.9,
           "tolstoi_char_rnn": 0.25}  # fmt: skip


def settings(steps: int, **extra) -> TrainSettings:
    return TrainSettings(num_steps=steps, eval_every=steps, checkpoint_every=None, progress="off",
                         **extra)  # fmt: skip


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
        loop.train_single(problem, model, opt, sched, settings(steps), run)
        sync(device)
        total += time.perf_counter() - t0
    return total


def together(problem, seeds, steps: int, folder: Path, device: str, **extra) -> float:
    """Seconds for one seed-parallel run of all K seeds (``extra``: TrainSettings, e.g.
    ``cuda_graph=True``)."""
    models = [problem.build_model(seed) for seed in seeds]
    make = lambda params, lr: MSVAG(params, lr=lr)  # noqa: E731
    sync(device)
    t0 = time.perf_counter()
    loop.train_group(problem, models, make, settings(steps, **extra), seeds, runs(folder, seeds),
                     [1e-3] * len(seeds))  # fmt: skip
    sync(device)
    return time.perf_counter() - t0


def member_cost(problem, k: int, steps: int, folder: Path, device: str) -> dict:
    """One single run and one group of ``k`` (seeds 0..k-1), ``steps`` steps each, timed
    back to back: ``single_s`` (seconds per step of the single run), ``member_s`` (seconds
    per member-step of the group) and ``cost`` (member_s / single_s)."""
    single = sequential(problem, [0], steps, folder / "single", device) / steps
    member = together(problem, list(range(k)), steps, folder / f"k{k}", device) / (k * steps)
    return {"K": k, "single_s": single, "member_s": member, "cost": member / single}
