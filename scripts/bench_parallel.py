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
import tempfile
from pathlib import Path

import torch

from dissecting_adam.bench.data import load_for_timing
from dissecting_adam.bench.seed_parallel import PROBLEMS, sequential, together
from dissecting_adam.bench.timing import evaluation_off, load_average


def main() -> None:
    parser = argparse.ArgumentParser(description="Seed-parallel vs sequential training.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20, help="training steps per run")
    parser.add_argument("--ks", default="1,2,5,10", help="group sizes K")
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    args = parser.parse_args()
    load_avg = load_average()
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
    with evaluation_off(), tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for pname in args.problems.split(","):
            problem, _, _ = load_for_timing(pname.strip(), args.device, scratch, real=False)
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


if __name__ == "__main__":
    main()
