"""Seed-parallel training: K seeds as one batched run vs K single runs, one after another.

    python scripts/bench_parallel.py --device cpu --steps 5
    python scripts/bench_parallel.py --device cuda --steps 50 --ks 1,2,5,10,20

For each CNN problem (at its paper batch size: 64 for fmnist_2c2d, 128 for cifar10_3c3d)
and each K, the same process times ``train()`` for seeds 0..K-1 one after another and
``parallel.train_parallel`` for the same seeds at once, each for ``--steps`` steps with
M-SVAG, evaluation stubbed out and checkpoints off (everything else, including drawing
and augmenting the batches, as in a real run). Printed: ms per training step per seed,
sequential vs parallel, and their ratio (the speed-up; > 1 means parallel pays). The data
are generated images of the real shapes (timing only; said so in the output).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from dissecting_adam.optim import MSVAG
from dissecting_adam.problems import load
from dissecting_adam.problems.datasets import synthetic
from dissecting_adam.runner import loop as train_module
from dissecting_adam.runner import parallel
from dissecting_adam.runner.spec import TrainSettings
from dissecting_adam.runner.store import RunDir

PROBLEMS = ("fmnist_2c2d", "cifar10_3c3d")


def generated(name: str, device: str, scratch: Path):
    """The problem on generated images: 2,048 training and 256 test images."""
    if name == "fmnist_2c2d":
        source = synthetic.write_fashion_mnist(scratch, n_train=2048, n_test=256)
    else:
        source = synthetic.write_cifar(scratch, "cifar-10", n_train=2048, n_test=256)
    return load(name, source=source, mirror=str(scratch), data_root=str(scratch), device=device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


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


def main() -> None:
    parser = argparse.ArgumentParser(description="Seed-parallel vs sequential training.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20, help="training steps per run")
    parser.add_argument("--ks", default="1,2,5,10", help="group sizes K")
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    args = parser.parse_args()
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(
        f"# torch {torch.__version__}, {args.device} ({name}), {torch.get_num_threads()} CPU "
        f"threads, load {load_avg:.1f}; {args.steps} steps a run, M-SVAG, evaluation off"
    )
    print("# generated images of the real shapes: timing only")
    print(
        f"{'device':6} {'problem':13} {'batch':>5} {'K':>3} {'seq ms/step':>12} "
        f"{'par ms/step':>12} {'speed-up':>9}"
    )
    real_evaluate = parallel.evaluation_rows, train_module.evaluation_rows
    parallel.evaluation_rows = train_module.evaluation_rows = lambda *args: []
    try:
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            for pname in args.problems.split(","):
                problem = generated(pname.strip(), args.device, scratch)
                sequential(problem, [0], 2, scratch / "warm", args.device)  # warm-up
                together(problem, [0, 1], 2, scratch / "warm", args.device)
                for k in (int(x) for x in args.ks.split(",")):
                    seeds = list(range(k))
                    folder = scratch / f"{pname}-{k}"
                    seq = sequential(problem, seeds, args.steps, folder / "seq", args.device)
                    par = together(problem, seeds, args.steps, folder / "par", args.device)
                    per = 1e3 / (k * args.steps)
                    print(
                        f"{args.device:6} {problem.name:13} {problem.batch_size:5d} {k:3d} "
                        f"{seq * per:12.2f} {par * per:12.2f} {seq / par:8.2f}x",
                        flush=True,
                    )
    finally:
        parallel.evaluation_rows, train_module.evaluation_rows = real_evaluate


if __name__ == "__main__":
    main()
