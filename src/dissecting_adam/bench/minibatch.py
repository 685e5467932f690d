"""The extra cost of mini-batch variance estimates (§D): a step of M-SVAG-mb against M-SVAG.

One training step = loss, gradients and the optimizer step. M-SVAG: ``training_loss`` +
``backward()``; M-SVAG-mb: ``per_example.backward_with_variance`` (per-example gradients
with torch.func, their mean and variance) + the step. Rounds alternate between the two
methods and the medians are compared, measured in the same run. Inputs are random tensors
of the problem's batch shape (generated, timing only): the step's cost does not depend on
the pixel values.
"""

from __future__ import annotations

import statistics
import time

import torch

from ..optim import MSVAG
from ..optim.msvag_mb import MSVAGMB
from ..per_example import backward_with_variance
from ..problems import Batch, load
from .timing import sync

#: Input shape of an example (None: text) and the number of classes.
SHAPES = {
    "fmnist_2c2d": ((1, 28, 28), 10),
    "cifar10_3c3d": ((3, 32, 32), 10),
    "tolstoi_char_rnn": (None, 83),
}


def batch_for(problem, device) -> Batch:
    """A random batch of ``problem``'s shape on ``device``."""
    gen = torch.Generator().manual_seed(0)
    shape, classes = SHAPES[problem.name]
    n = problem.batch_size
    if shape is None:  # text: (streams, seq_length) character ids
        size = (n, problem.config.seq_length)
        x = torch.randint(0, classes, size, generator=gen)
        y = torch.randint(0, classes, size, generator=gen)
    else:
        x = torch.randn((n, *shape), generator=gen)
        y = torch.randint(0, classes, (n,), generator=gen)
    return Batch(x.to(device), y.to(device), 0, False)


def step_plain(problem, model, opt, batch) -> None:
    opt.zero_grad(set_to_none=True)
    problem.training_loss(model, batch).backward()
    opt.step()


def step_mb(problem, model, opt, batch) -> None:
    opt.zero_grad(set_to_none=True)
    backward_with_variance(problem, model, batch)
    opt.step()


def bench(name: str, device: str, steps: int, rounds: int) -> dict:
    """Median ms per step of M-SVAG and M-SVAG-mb on ``name`` (``steps`` a round), and the
    problem's batch size."""
    problem = load(name, device=device)
    batch = batch_for(problem, device)
    arms = {}
    for label, cls, fn in (("msvag", MSVAG, step_plain), ("msvag_mb", MSVAGMB, step_mb)):
        model = problem.build_model(0)
        model.train()
        arms[label] = (model, cls(model.parameters(), lr=1e-3), fn)
        fn(problem, model, arms[label][1], batch)  # warm-up
    times = {label: [] for label in arms}
    for _ in range(rounds):
        for label, (model, opt, fn) in arms.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                fn(problem, model, opt, batch)
            sync(device)
            times[label].append((time.perf_counter() - start) / steps * 1e3)
    out = {label: statistics.median(t) for label, t in times.items()}
    return {**out, "batch": problem.batch_size, "ratio": out["msvag_mb"] / out["msvag"]}
