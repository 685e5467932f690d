"""The training loop: one run of one optimizer on one problem, recorded in a RunDir.

``train`` receives built objects (problem, model, optimizer, scheduler, settings, run
folder, logger) and reads top to bottom:

1. resume from the run's checkpoint if there is one (model, optimizer, scheduler, RNGs,
   data position, LSTM state), else seed the global RNG (dropout) with the run's seed;
2. loop: evaluate at the fixed evaluation steps (step 0 and the last step included) on the
   test set and the train-eval subset; checkpoint at its interval; draw a batch, compute the
   loss; every ``log_every`` steps record the mini-batch loss and check the largest loss
   since the last check for divergence; take the optimizer and scheduler step;
3. write summary.json (``completed`` or ``diverged``), remove the checkpoint.

A diverged run (a non-finite loss, or a mini-batch loss above ``divergence_factor`` times
the first one) stops at once and is recorded with its step; nothing is back-filled.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import per_example
from . import checkpoint
from .loggers import Logger, NoLogger
from ..problems import Problem
from .store import RunDir

log = logging.getLogger(__name__)

SPLITS = ("train_eval", "test")


class Interrupted(Exception):
    """Training was asked to stop (SIGTERM); a checkpoint at the current step was written."""


@dataclass(frozen=True)
class TrainSettings:
    """How a run is driven; every field but the last four changes the recorded result."""

    num_steps: int
    eval_every: int
    seed: int = 0
    log_every: int = 10
    divergence_factor: float | None = 100.0
    checkpoint_every: int | None = 500
    keep_checkpoint: bool = False
    progress: str = "auto"  # "auto" (a bar on a terminal, else lines), "bar", "lines", "off"
    log_interval_s: float = 60.0

    def __post_init__(self):
        if self.num_steps < 0 or self.eval_every < 1 or self.log_every < 1:
            raise ValueError(f"need num_steps >= 0, eval_every >= 1, log_every >= 1: {self}")
        if self.divergence_factor is not None and not self.divergence_factor > 1:
            raise ValueError(f"divergence_factor must be > 1 or None, got {self.divergence_factor}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1 or None, got {self.checkpoint_every}")


def eval_steps(num_steps: int, every: int) -> set[int]:
    """Steps (optimizer steps done) at which to evaluate: 0, every, 2 every, ..., num_steps."""
    return set(range(0, num_steps + 1, every)) | {num_steps}


def default_eval_every(num_steps: int, points: int = 50) -> int:
    """An interval giving about ``points`` evaluations per curve (plus step 0)."""
    return max(1, num_steps // max(1, points))


def train(
    problem: Problem,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    settings: TrainSettings,
    run: RunDir,
    logger: Logger | None = None,
    stop: Callable[[], bool] | None = None,
) -> dict:
    """Train, evaluate and record one run; return its summary (also in summary.json).

    ``stop`` is polled once per step; when it returns True (SIGTERM, e.g. a SLURM time
    limit) the run checkpoints at that step and raises ``Interrupted``.
    """
    logger = logger or NoLogger()
    started = time.perf_counter()
    evals = eval_steps(settings.num_steps, settings.eval_every)

    # 1. Resume or start.
    batches = problem.train_batches(settings.seed)
    counters = {"initial_loss": None, "elapsed_s": 0.0, "metrics_size": 0, "last_eval": {}}
    # The largest mini-batch loss since the last check, kept on the device so that a spike
    # between two checks is caught without a sync every step (a dead network that blew
    # up at step 3 and sits at chance level by step 10 has diverged).
    peak: torch.Tensor | None = None
    start = 0
    if run.checkpoint_file.exists():
        restored = checkpoint.load(
            run.checkpoint_file, model=model, optimizer=optimizer, scheduler=scheduler
        )
        start, counters = restored["step"], restored["runner"]
        if counters.get("peak_loss") is not None:  # the window open at the checkpoint
            device = next(model.parameters()).device
            peak = torch.tensor(counters["peak_loss"], device=device)
        run.truncate_metrics(counters["metrics_size"])  # drop rows written after it
        checkpoint.skip(batches, start)  # the data position
        log.info("resumed %s at step %d", run.path, start)
    else:
        torch.manual_seed(settings.seed)  # dropout; build_model and batches have their own
        run.truncate_metrics(0)
    model.train()

    # 2. The loop.
    batch_variance = getattr(optimizer, "needs_batch_variance", False)
    if batch_variance:
        per_example.check_supported(model, problem.name)
    progress = _Progress(settings, start)
    status, diverged_step, reason = "completed", None, None
    step = start
    while True:
        if step in evals and not (step == start and start > 0):
            rows = evaluate(problem, model, step)
            counters["metrics_size"] = run.append_metrics(rows)
            counters["last_eval"] = {f"{r['split']}_{k}": r[k] for r in rows for k in _KEYS}
            logger.log({f"{r['split']}/{k}": r[k] for r in rows for k in _KEYS}, step)
            bad = [r["split"] for r in rows if not math.isfinite(r["loss"])]
            if bad:
                status, diverged_step, reason = "diverged", step, f"non-finite {bad[0]} loss"
                break
        if step >= settings.num_steps:
            break
        stopping = stop is not None and stop()
        if (_due(settings.checkpoint_every, step) or stopping) and step > start:
            counters["elapsed_s"] += time.perf_counter() - started
            counters["peak_loss"] = None if peak is None else peak.item()
            started = time.perf_counter()
            checkpoint.save(
                run.checkpoint_file,
                step=step,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                runner=counters,
            )
        if stopping:
            progress.close(step)
            raise Interrupted(f"{run.path} stopped at step {step}; rerun to resume it")

        batch = next(batches)
        optimizer.zero_grad(set_to_none=True)
        if batch_variance:  # M-SVAG / SVAG with mini-batch variance estimates (§D)
            loss = per_example.backward_with_variance(problem, model, batch)
        else:
            loss = problem.training_loss(model, batch)
            loss.backward()
        peak = loss.detach().clone() if peak is None else torch.maximum(peak, loss.detach())
        if step % settings.log_every == 0:
            value = loss.item()
            row = {"step": step, "split": "minibatch", "loss": value}
            counters["metrics_size"] = run.append_metrics([row])
            if counters["initial_loss"] is None:
                counters["initial_loss"] = value
            worst, peak = peak.item(), None
            reason = diverging(worst, counters["initial_loss"], settings.divergence_factor)
            if reason:
                status, diverged_step = "diverged", step
                break
            progress.update(step, value)
        optimizer.step()
        scheduler.step()
        step += 1
    progress.close(step)

    # 3. Summary.
    elapsed = counters["elapsed_s"] + time.perf_counter() - started
    summary = {
        "status": status,
        "steps_done": step,
        "num_steps": settings.num_steps,
        "diverged_step": diverged_step,
        "divergence_reason": reason,
        "initial_loss": counters["initial_loss"],
        "final": counters["last_eval"],
        "train_time_s": elapsed,
    }
    run.write_summary(summary)
    if not settings.keep_checkpoint:
        run.checkpoint_file.unlink(missing_ok=True)
    if status == "diverged":
        log.warning("%s diverged at step %d: %s", run.path, step, reason)
    return summary


_KEYS = ("loss", "accuracy", "data_loss")


def evaluate(problem: Problem, model: torch.nn.Module, step: int) -> list[dict]:
    """One metrics row per evaluation split at ``step``."""
    rows = []
    for split in SPLITS:
        result = problem.evaluate(model, split)
        rows.append({"step": step, "split": split, **result._asdict()})
    return rows


def diverging(loss: float, initial: float, factor: float | None) -> str | None:
    """Why ``loss`` counts as diverged, or None: non-finite, or above factor x initial."""
    if not math.isfinite(loss):
        return f"non-finite mini-batch loss ({loss})"
    if factor is not None and initial is not None and loss > factor * abs(initial):
        return f"mini-batch loss {loss:.4g} > {factor:g} x initial loss {initial:.4g}"
    return None


def _due(every: int | None, step: int) -> bool:
    return every is not None and step % every == 0


class _Progress:
    """A tqdm bar with rate and ETA on a terminal, else a plain log line now and then."""

    def __init__(self, settings: TrainSettings, start: int):
        mode = settings.progress
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode, self.total, self.start = mode, settings.num_steps, start
        self.interval, self.t0 = settings.log_interval_s, time.perf_counter()
        self.last = self.t0
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=start, unit="step", dynamic_ncols=True)
            self.shown = start

    def update(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(step - self.shown)
            self.shown = step
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        elif self.mode == "lines":
            now = time.perf_counter()
            if now - self.last >= self.interval:
                self.last = now
                rate = (step - self.start) / max(now - self.t0, 1e-9)
                eta = (self.total - step) / rate if rate > 0 else float("nan")
                log.info(
                    "step %d/%d  loss %.4f  %.2f steps/s  ETA %.0f s",
                    step,
                    self.total,
                    loss,
                    rate,
                    eta,
                )

    def close(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.shown)
            self.bar.close()
