"""The extra cost of mini-batch variance estimates (§D): M-SVAG-mb vs M-SVAG per step.

    python scripts/bench_minibatch.py                                # P1, P2 (and P4) on CPU/CUDA
    python scripts/bench_minibatch.py --problems fmnist_2c2d --devices cpu --steps 10

One training step = loss, gradients and the optimizer step. M-SVAG: ``training_loss`` +
``backward()``; M-SVAG-mb: ``per_example.backward_with_variance`` (per-example gradients
with torch.func, their mean and variance) + the step. Rounds alternate between the two
methods and the medians are printed with their ratio, measured in the same run. Inputs are
random tensors of the problem's batch shape ("generated, timing only"): the step's cost
does not depend on the pixel values (``dissecting_adam.bench.minibatch``).
"""

from __future__ import annotations

import argparse

import torch

from dissecting_adam.bench.minibatch import bench


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
            r = bench(name, device, args.steps, args.rounds)
            print(f"{name:18} {device:6} {r['batch']:>5} {r['msvag']:>10.1f} "
                  f"{r['msvag_mb']:>13.1f} {r['ratio']:>6.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
