"""Groups vs single runs: the per member-step cost of a group of K against a single run.

    python scripts/bench_parallel.py --device cpu --steps 5
    python scripts/bench_parallel.py --device cuda --steps 50 --ks 1,2,4,10
    python scripts/bench_parallel.py --problems fmnist_2c2d,tolstoi_char_rnn --tiny

For each problem (at its paper batch size; ``--tiny``: batches of 4-8 on small generated
sets) and each K, the same process times a single run (``loop.train_single``) and then one
group of K members (``loop.train_group``: the runner's stacked engine), each for
``--steps`` steps with M-SVAG, evaluation stubbed out and checkpoints off (everything else,
drawing and augmenting the batches included, as in a real run). Printed: ms per step of the
single run, ms per member-step of the group, and their ratio, the cost (below 1: the group
pays; the targets on an H200 are 0.25 for P1, P2, P4 and 0.9 for P3). K = 1 is a group of
one against a single run: the two loops' difference. The device line names the CPU or GPU
model. The data are generated stand-ins (timing only; said so in the output).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from dissecting_adam.bench.data import load_for_timing
from dissecting_adam.bench.seed_parallel import (
    PROBLEMS,
    TARGETS,
    member_cost,
    sequential,
    together,
)
from dissecting_adam.bench.timing import evaluation_off, load_average
from dissecting_adam.runner.environment import cpu_model

TINY_BATCH = {"fmnist_2c2d": 8, "cifar10_3c3d": 8, "cifar100_wrn404": 4, "tolstoi_char_rnn": 4}


def main() -> None:
    parser = argparse.ArgumentParser(description="Per member-step cost of a group of K.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20, help="training steps per run")
    parser.add_argument("--ks", default="1,2,4,10", help="group sizes K")
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--tiny", action="store_true", help="small batches and data sets")
    args = parser.parse_args()
    load_avg = load_average()
    cuda = args.device.startswith("cuda")
    name = torch.cuda.get_device_name(torch.device(args.device)) if cuda else cpu_model()
    print(
        f"# torch {torch.__version__}, {args.device} ({name}), {torch.get_num_threads()} CPU "
        f"threads, load {load_avg:.1f}; {args.steps} steps a run, M-SVAG, evaluation off"
    )
    sizes = "tiny batches, small generated sets" if args.tiny else "real shapes, paper batches"
    print(f"# generated data ({sizes}): timing only")
    print(f"{'device':6} {'problem':16} {'batch':>5} {'K':>3} {'single ms/step':>14} "
          f"{'group ms/member-step':>20} {'cost':>6} {'H200 target':>11}")  # fmt: skip
    with evaluation_off(), tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for pname in (p.strip() for p in args.problems.split(",")):
            extra = {"batch_size": TINY_BATCH[pname]} if args.tiny else {}
            problem, _, _ = load_for_timing(pname, args.device, scratch, real=False,
                                            kind="small" if args.tiny else "shapes",
                                            overrides=extra)  # fmt: skip
            sequential(problem, [0], 2, scratch / "warm", args.device)  # warm-ups
            together(problem, [0, 1], 2, scratch / "warm", args.device)
            for k in (int(x) for x in args.ks.split(",")):
                row = member_cost(problem, k, args.steps, scratch / f"{pname}-{k}", args.device)
                print(
                    f"{args.device:6} {problem.name:16} {problem.batch_size:5d} {k:3d} "
                    f"{row['single_s'] * 1e3:14.2f} {row['member_s'] * 1e3:20.2f} "
                    f"{row['cost']:6.2f} {'<= ' + str(TARGETS[pname]):>11}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
