"""Time one training step of each problem, split into input pipeline and model.

    python scripts/bench_problems.py                       # all four, CPU and CUDA if present
    python scripts/bench_problems.py --problems fmnist_2c2d,tolstoi_char_rnn --devices cpu

Columns: "input" is drawing one batch (indexing the resident data, augmentation); "fwd+bwd"
is the forward and backward pass of the loss that is minimised; "optim" is one M-SVAG step;
"input share" is input / (input + fwd+bwd + optim). Times are medians over the measured
steps, after warm-up, with the device synchronised around each part.

Fashion-MNIST and War and Peace must be available (``$DATA_MIRROR`` or --mirror, or a
network); when the real CIFAR data is not, CIFAR problems run on generated files in the
original format, marked "generated (timing only)": the numbers then say nothing but speed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dissecting_adam.optim import MSVAG
from dissecting_adam.problems import PROBLEMS, DataError, load
from dissecting_adam.problems.datasets import synthetic

GENERATED = {"cifar10_3c3d": "cifar-10", "cifar100_wrn404": "cifar-100"}
CPU_STEPS = {"cifar100_wrn404": 1}  # WRN-40-4 at batch 128: tens of seconds per CPU step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def get_problem(name: str, device: str, args, scratch: Path, notes: list[str]):
    """The problem on real data, or on generated CIFAR files (label says which)."""
    problem = load(name, device=device, data_root=args.data_root, mirror=args.mirror)
    try:
        _ = problem.data  # resident on the device before any timing
        return problem, "real"
    except DataError as err:
        if name not in GENERATED:
            raise
        notes.append(f"# {name}: real data unavailable ({str(err).splitlines()[0]})")
        source = synthetic.write_cifar(
            scratch / "mirror", GENERATED[name], n_train=2048, n_test=256, seed=0
        )
        problem = load(
            name,
            source=source,
            device=device,
            data_root=str(scratch / "data"),
            mirror=str(scratch / "mirror"),
        )
        _ = problem.data  # resident on the device before any timing
        return problem, "generated (timing only)"


def bench(problem, device: torch.device, steps: int, warmup: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = problem.build_model(0)
    opt = MSVAG(model.parameters(), lr=1e-3)
    batches = problem.train_batches(0)
    times = {"input": [], "fwd+bwd": [], "optim": []}
    for i in range(warmup + steps):
        batch, t_in = timed(lambda: next(batches), device)

        def fwd_bwd(batch=batch):
            opt.zero_grad(set_to_none=True)
            problem.training_loss(model, batch).backward()

        _, t_model = timed(fwd_bwd, device)
        _, t_opt = timed(opt.step, device)
        if i >= warmup:
            for key, t in zip(times, (t_in, t_model, t_opt), strict=True):
                times[key].append(t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None, help="default: 5 CPU, 50 CUDA")
    parser.add_argument("--warmup", type=int, default=None, help="default: 1 CPU, 10 CUDA")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--mirror", default=None, help="default: $DATA_MIRROR")
    args = parser.parse_args()

    header = f"{'device':6} {'problem':17} {'batch':>5} {'input ms':>9} {'fwd+bwd ms':>11}"
    header += f" {'optim ms':>9} {'input share':>11}  data"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} CPU threads, load {load:.1f}")
    if torch.cuda.is_available():
        print(f"# CUDA device: {torch.cuda.get_device_name()}")
    print(header)
    print("-" * len(header))
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        for dev in args.devices.split(","):
            device = torch.device(dev)
            cuda = device.type == "cuda"
            for name in args.problems.split(","):
                try:
                    problem, data = get_problem(name, dev, args, Path(scratch), notes)
                except DataError as err:
                    print(f"{dev:6} {name:17} skipped: {str(err).splitlines()[0]}")
                    continue
                steps = args.steps or (50 if cuda else CPU_STEPS.get(name, 5))
                warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
                t = bench(problem, device, steps, warmup)
                share = t["input"] / sum(t.values())
                print(
                    f"{dev:6} {name:17} {problem.batch_size:5d} {1e3 * t['input']:9.2f} "
                    f"{1e3 * t['fwd+bwd']:11.2f} {1e3 * t['optim']:9.2f} {share:11.1%}  {data}",
                    flush=True,
                )

    for note in dict.fromkeys(notes):  # once per problem, not once per device
        print(note)


if __name__ == "__main__":
    main()
