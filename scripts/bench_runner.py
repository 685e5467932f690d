"""Runner overhead: time per step of ``train()`` (evaluation off) vs a bare loop.

    python scripts/bench_runner.py                  # P1 and P4, real data if present
    python scripts/bench_runner.py --problems tolstoi_char_rnn --steps 200 --repeats 5

Both loops train the same model, data and optimizer in the same process; the trials
alternate (bare, runner, bare, ...) and the median time per step of each is compared
(target: overhead <= 3%). "Evaluation off" means the runner's evaluation function is
replaced by a no-op for the timing; checkpoints are off; everything else (mini-batch loss
every 10 steps, metrics appends, divergence checks, progress) runs as in a real run. Then
one full evaluation pass of each split is timed. Uses the real data when it is prepared or
$DATA_MIRROR has it, else generated data of the same shapes (said so in the output).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from dissecting_adam.bench.data import load_for_timing
from dissecting_adam.bench.runner_overhead import evaluation_seconds, overhead
from dissecting_adam.bench.timing import load_average

#: Batch sizes on the small generated stand-ins.
STAND_IN_BATCH = {"cifar100_wrn404": 8, "tolstoi_char_rnn": 4}


def bench(name: str, args, scratch: Path) -> None:
    problem, data, why = load_for_timing(
        name, args.device, scratch, data_root=args.data_root, kind="small",
        stand_in_overrides={"batch_size": STAND_IN_BATCH.get(name, 8)},
    )  # fmt: skip
    if why:
        print(f"# {name}: {why[:103]}...)")
    label = "real" if data == "real" else "generated (timing only)"
    res, model = overhead(problem, args.device, args.steps, args.repeats, scratch)
    b, r = res["bare_s"], res["runner_s"]
    print(
        f"{args.device:6} {name:17} {problem.batch_size:5d} {b * 1e3:9.2f} {r * 1e3:10.2f} "
        f"{res['overhead'] * 100:+8.1f}%  {label}"
    )
    print(
        f"#   trials, ms/step: bare {[round(x * 1e3, 1) for x in res['bare']]}, "
        f"runner {[round(x * 1e3, 1) for x in res['runner']]}"
    )
    for split in ("test", "train_eval"):
        seconds = evaluation_seconds(problem, model, args.device, split)
        print(f"#   one evaluation pass on {split}: {seconds:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description="Runner overhead vs a bare training loop.")
    parser.add_argument("--problems", default="fmnist_2c2d,tolstoi_char_rnn")
    parser.add_argument("--steps", type=int, default=60, help="steps per trial")
    parser.add_argument("--repeats", type=int, default=3, help="trials of each loop")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-root", default="data")
    args = parser.parse_args()
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"load {load_average():.1f}"
    )
    print(
        f"{'device':6} {'problem':17} {'batch':>5} {'bare ms':>9} {'runner ms':>10} "
        f"{'overhead':>9}  data"
    )
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.problems.split(","):
            bench(name.strip(), args, Path(scratch))


if __name__ == "__main__":
    main()
