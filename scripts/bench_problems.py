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
import tempfile
from pathlib import Path

import torch

from dissecting_adam.bench.data import load_for_timing
from dissecting_adam.bench.problem_step import step_times
from dissecting_adam.bench.timing import load_average
from dissecting_adam.problems import PROBLEMS, DataError

GENERATED = ("cifar10_3c3d", "cifar100_wrn404")  # the others need their real data
CPU_STEPS = {"cifar100_wrn404": 1}  # WRN-40-4 at batch 128: tens of seconds per CPU step


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
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"load {load_average():.1f}")  # fmt: skip
    if torch.cuda.is_available():
        print(f"# CUDA device: {torch.cuda.get_device_name()}")
    print(header)
    print("-" * len(header))
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        for dev in args.devices.split(","):
            cuda = torch.device(dev).type == "cuda"
            for name in args.problems.split(","):
                try:
                    problem, data, why = load_for_timing(
                        name, dev, Path(scratch), data_root=args.data_root,
                        mirror=args.mirror, fallback=GENERATED,
                    )  # fmt: skip
                except DataError as err:
                    print(f"{dev:6} {name:17} skipped: {str(err).splitlines()[0]}")
                    continue
                if why:
                    notes.append(f"# {name}: {why}")
                steps = args.steps or (50 if cuda else CPU_STEPS.get(name, 5))
                warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
                t = step_times(problem, torch.device(dev), steps, warmup)
                share = t["input"] / t["step"]
                label = "real" if data == "real" else "generated (timing only)"
                print(
                    f"{dev:6} {name:17} {problem.batch_size:5d} {1e3 * t['input']:9.2f} "
                    f"{1e3 * t['fwd+bwd']:11.2f} {1e3 * t['optim']:9.2f} {share:11.1%}  {label}",
                    flush=True,
                )

    for note in dict.fromkeys(notes):  # once per problem, not once per device
        print(note)


if __name__ == "__main__":
    main()
