"""Runner overhead: time per step of ``runner.loop.train`` (one run) against a bare loop.

Both loops train the same model, data and optimizer (M-SVAG) in the same process; the
trials alternate (bare, runner, bare, ...) and the median time per step of each is
compared. The runner's evaluation is switched off for the timing and checkpoints are off;
everything else (mini-batch loss every 10 steps, metrics appends, divergence checks,
progress) runs as in a real run. ``compile_mode`` compiles the model first
(``runner.backend.compile_model``) and times both loops on the compiled model.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..optim import MSVAG
from ..runner import backend
from ..runner import loop as train_module
from ..runner.spec import TrainSettings
from ..runner.store import RunDir
from .timing import NEVER, Deadline, evaluation_off, median, sync


def bare_loop(
    problem, model, opt, sched, batches, steps: int, device: str, compile_mode: str | None = None
) -> float:
    """Seconds per step of the plainest loop over the same steps."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        backend.mark_step(compile_mode, device)
        opt.zero_grad()
        problem.training_loss(model, next(batches)).backward()
        opt.step()
        sched.step()
    sync(device)
    return (time.perf_counter() - t0) / steps


def runner_loop(
    problem,
    model,
    opt,
    sched,
    steps: int,
    folder: Path,
    device: str,
    compile_mode: str | None = None,
    progress: str = "lines",
) -> float:
    """Seconds per step of ``train()`` (a fresh run folder, no checkpoints)."""
    settings = TrainSettings(
        num_steps=steps,
        eval_every=steps,
        checkpoint_every=None,
        progress=progress,
        compile=compile_mode,
    )
    run = RunDir(folder)
    folder.mkdir(parents=True, exist_ok=True)
    run.checkpoint_file.unlink(missing_ok=True)
    sync(device)
    t0 = time.perf_counter()
    train_module.train_single(problem, model, opt, sched, settings, run)
    sync(device)
    return (time.perf_counter() - t0) / steps


def overhead(
    problem,
    device: str,
    steps: int,
    repeats: int,
    scratch: Path,
    *,
    compile_mode: str | None = None,
    warmup: int = 5,
    progress: str = "lines",
    deadline: Deadline = NEVER,
) -> tuple[dict, torch.nn.Module]:
    """Trials of both loops, alternating: ``bare`` and ``runner`` (seconds per step of each
    trial), their medians ``bare_s`` and ``runner_s`` and ``overhead`` (runner / bare - 1);
    and the trained model. Stops after the first pair of trials once ``deadline`` has
    passed."""
    model = problem.build_model(0)
    if compile_mode is not None:
        backend.compile_model(model, compile_mode)
    opt = MSVAG(model.parameters(), lr=1e-3)
    sched = problem.lr_scheduler(opt)
    batches = problem.train_batches(0)
    torch.manual_seed(0)
    bare_loop(problem, model, opt, sched, batches, warmup, device, compile_mode)  # warm-up
    bare, runner = [], []
    tag = compile_mode or "eager"
    with evaluation_off():
        for i in range(repeats):
            if i > 0 and deadline.expired():
                break
            bare.append(bare_loop(problem, model, opt, sched, batches, steps, device, compile_mode))
            folder = Path(scratch) / f"run-{problem.name}-{tag}-{i}"
            runner.append(
                runner_loop(
                    problem, model, opt, sched, steps, folder, device, compile_mode, progress
                )
            )
    b, r = median(bare), median(runner)
    result = {"bare": bare, "runner": runner, "bare_s": b, "runner_s": r, "overhead": r / b - 1}
    return result, model


def evaluation_seconds(problem, model, device: str, split: str) -> float:
    """One full evaluation pass of ``split`` (after a warm-up pass)."""
    problem.evaluate(model, split)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    problem.evaluate(model, split)
    sync(device)
    return time.perf_counter() - t0
