"""The extra cost of mini-batch variance estimates (§D): M-SVAG-mb vs M-SVAG per step.

    python scripts/bench_minibatch.py                                # P1, P2 (and P4) on CPU/CUDA
    python scripts/bench_minibatch.py --problems fmnist_2c2d --devices cpu --steps 10

One training step = loss, gradients and the optimizer step. M-SVAG: ``training_loss`` +
``backward()``; M-SVAG-mb: ``per_example.backward_with_variance`` (per-example gradients
with torch.func, their mean and variance) + the step. Rounds alternate between the two
methods and the medians are printed with their ratio, measured in the same run. Inputs are
random tensors of the problem's batch shape ("generated, timing only"): the step's cost
does not depend on the pixel values.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dissecting_adam.optim import MSVAG
from dissecting_adam.optim.msvag_mb import MSVAGMB
from dissecting_adam.per_example import backward_with_variance
from dissecting_adam.problems import Batch, load

SHAPES = {
    "fmnist_2c2d": ((1, 28, 28), 10),
    "cifar10_3c3d": ((3, 32, 32), 10),
    "tolstoi_char_rnn": (None, 83),
}


def batch_for(problem, device) -> Batch:
    gen = torch.Generator().manual_seed(0)
    shape, classes = SHAPES[problem.name]
    n = problem.batch_size
    if shape is None:  # text: (streams, seq_length) character ids
        size = (n, problem.config.seq_length)
        x = torch.randint(0, classes, size, generator=gen)
        y = torch.randint(0, classes, size, generator=gen)
    else:
        x, y = (
            torch.randn((n, *shape), generator=gen),
            torch.randint(0, classes, (n,), generator=gen),
        )
    return Batch(x.to(device), y.to(device), 0, False)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_plain(problem, model, opt, batch):
    opt.zero_grad(set_to_none=True)
    problem.training_loss(model, batch).backward()
    opt.step()


def step_mb(problem, model, opt, batch):
    opt.zero_grad(set_to_none=True)
    backward_with_variance(problem, model, batch)
    opt.step()


def bench(name: str, device: torch.device, steps: int, rounds: int) -> tuple[float, float]:
    problem = load(name, device=str(device))
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
    return statistics.median(times["msvag"]), statistics.median(times["msvag_mb"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="fmnist_2c2d,cifar10_3c3d,tolstoi_char_rnn")
    parser.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=5, help="steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
          "inputs generated (timing only)")  # fmt: skip
    head = ("problem", "device", "batch", "M-SVAG ms", "M-SVAG-mb ms", "ratio")
    print("{:18} {:6} {:>5} {:>10} {:>13} {:>6}".format(*head))
    for device in args.devices.split(","):
        for name in args.problems.split(","):
            plain, mb = bench(name, torch.device(device), args.steps, args.rounds)
            batch = load(name).batch_size
            print(f"{name:18} {device:6} {batch:>5} {plain:>10.1f} {mb:>13.1f} {mb / plain:>6.2f}x")


if __name__ == "__main__":
    main()
