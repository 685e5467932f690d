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
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dissecting_adam.optim import MSVAG
from dissecting_adam.problems import DataError, load
from dissecting_adam.runner import loop as train_module
from dissecting_adam.runner.data import synthetic_sources
from dissecting_adam.runner.spec import TrainSettings
from dissecting_adam.runner.store import RunDir


def get_problem(name: str, device: str, data_root: str, scratch: Path):
    try:
        problem = load(name, device=device, data_root=data_root)
        problem.prepare()
        return problem, "real"
    except (DataError, OSError) as err:
        print(f"# {name}: real data unavailable ({str(err).splitlines()[0][:80]}...)")
    source = synthetic_sources(scratch)[name]
    batch = {"cifar100_wrn404": 8, "tolstoi_char_rnn": 4}.get(name, 8)
    problem = load(
        name,
        source=source,
        mirror=str(scratch),
        data_root=str(scratch),
        device=device,
        batch_size=batch,
    )
    return problem, "generated (timing only)"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bare_loop(problem, model, opt, sched, batches, steps: int, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        problem.training_loss(model, next(batches)).backward()
        opt.step()
        sched.step()
    sync(device)
    return (time.perf_counter() - t0) / steps


def runner_loop(problem, model, opt, sched, steps: int, folder: Path, device: str) -> float:
    settings = TrainSettings(
        num_steps=steps, eval_every=steps, checkpoint_every=None, progress="lines"
    )
    run = RunDir(folder)
    folder.mkdir(parents=True, exist_ok=True)
    run.checkpoint_file.unlink(missing_ok=True)
    sync(device)
    t0 = time.perf_counter()
    train_module.train(problem, model, opt, sched, settings, run)
    sync(device)
    return (time.perf_counter() - t0) / steps


def bench(name: str, args, scratch: Path) -> None:
    problem, data = get_problem(name, args.device, args.data_root, scratch)
    model = problem.build_model(0)
    opt = MSVAG(model.parameters(), lr=1e-3)
    sched = problem.lr_scheduler(opt)
    batches = problem.train_batches(0)
    torch.manual_seed(0)
    bare_loop(problem, model, opt, sched, batches, 5, args.device)  # warm-up

    real_evaluate = train_module.evaluation_rows
    train_module.evaluation_rows = lambda *args: []  # evaluation off
    bare, runner = [], []
    try:
        for i in range(args.repeats):
            bare.append(bare_loop(problem, model, opt, sched, batches, args.steps, args.device))
            folder = scratch / f"run-{name}-{i}"
            runner.append(runner_loop(problem, model, opt, sched, args.steps, folder, args.device))
    finally:
        train_module.evaluation_rows = real_evaluate
    b, r = statistics.median(bare), statistics.median(runner)
    print(
        f"{args.device:6} {name:17} {problem.batch_size:5d} {b * 1e3:9.2f} {r * 1e3:10.2f} "
        f"{(r / b - 1) * 100:+8.1f}%  {data}"
    )
    print(
        f"#   trials, ms/step: bare {[round(x * 1e3, 1) for x in bare]}, "
        f"runner {[round(x * 1e3, 1) for x in runner]}"
    )
    for split in ("test", "train_eval"):
        problem.evaluate(model, split)  # warm-up
        sync(args.device)
        t0 = time.perf_counter()
        problem.evaluate(model, split)
        sync(args.device)
        print(f"#   one evaluation pass on {split}: {time.perf_counter() - t0:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description="Runner overhead vs a bare training loop.")
    parser.add_argument("--problems", default="fmnist_2c2d,tolstoi_char_rnn")
    parser.add_argument("--steps", type=int, default=60, help="steps per trial")
    parser.add_argument("--repeats", type=int, default=3, help="trials of each loop")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-root", default="data")
    args = parser.parse_args()
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} CPU threads, load {load_avg:.1f}"
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
