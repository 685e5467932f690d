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
import time
from collections.abc import Callable

import torch

from .. import per_example
from ..problems import Problem
from . import backend, checkpoint, files
from .loggers import Logger, NoLogger
from .monitor import (
    KEYS,
    Divergence,
    Progress,
    eval_steps,
    evaluation_rows,
    last_eval,
    non_finite,
    summary,
)
from .spec import TrainSettings
from .store import RunDir

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Training was asked to stop (SIGTERM); a checkpoint at the current step was written."""


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
    end = settings.end  # the budget, or where a partial run (a probe) stops
    evals = {s for s in eval_steps(settings.num_steps, settings.eval_every) if s <= end} | {end}
    monitor = Divergence(settings.divergence_factor)

    # 1. Resume or start.
    batches = problem.train_batches(settings.seed)
    counters = {"initial_loss": None, "elapsed_s": 0.0, "metrics_size": 0, "last_eval": {}}
    start = 0
    refused = []

    def accept(saved: dict) -> str | None:
        """A checkpoint resumes only onto the metrics it was written after: a shortened or
        changed metrics.jsonl would otherwise end as a completed run with holes."""
        reason = run.metrics_match(saved.get("metrics_size", 0), saved.get("metrics_sha256"))
        refused.extend([reason] if reason else [])
        return reason

    restored = checkpoint.load_latest(run.checkpoint_file, model=model, optimizer=optimizer,
                                      scheduler=scheduler, accept=accept)  # fmt: skip
    if restored is None and refused and run.metrics_file.exists():
        log.warning("%s: the run starts again from step 0 (the damaged metrics file is kept "
                    "as %s)", refused[0], files.move_aside(run.metrics_file))  # fmt: skip
    if restored is not None:
        start, counters = restored["step"], restored["runner"]
        monitor.restore(counters, next(model.parameters()).device)  # the window open then
        run.truncate_metrics(counters["metrics_size"])  # drop rows written after it
        checkpoint.skip(batches, start)  # the data position
        log.info("resumed %s at step %d", run.path, start)
    else:
        torch.manual_seed(settings.seed)  # dropout; build_model and batches have their own
        run.truncate_metrics(0)
    model.train()

    # 2. The loop.
    batch_variance = getattr(optimizer, "needs_batch_variance", False)
    graphs = backend.uses_cuda_graphs(settings.compile, next(model.parameters()).device.type)
    first_step_s = None  # of this session: includes compiling a compiled model
    if batch_variance:
        per_example.check_supported(model, problem.name)
    progress = Progress(settings.progress, end, start, settings.log_interval_s)
    status, diverged_step, reason = "completed", None, None
    step = start
    while True:
        if step in evals and not (step == start and start > 0):
            rows = evaluation_rows(problem, model, step, settings.eval_max_batches)
            counters["metrics_size"] = run.append_metrics(rows)
            counters["last_eval"] = last_eval(rows)
            logger.log({f"{r['split']}/{k}": r[k] for r in rows for k in KEYS}, step)
            reason = non_finite(rows)
            if reason:
                status, diverged_step = "diverged", step
                break
        if step >= end:
            break
        stopping = stop is not None and stop()
        if (_due(settings.checkpoint_every, step) or stopping) and step > start:
            counters["elapsed_s"] += time.perf_counter() - started
            counters.update(monitor.state())
            counters["metrics_sha256"] = run.metrics_sha256(counters["metrics_size"])
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

        if step == start:
            step_started = time.perf_counter()
        batch = next(batches)
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        optimizer.zero_grad(set_to_none=True)
        if batch_variance:  # M-SVAG / SVAG with mini-batch variance estimates (§D)
            loss = per_example.backward_with_variance(problem, model, batch)
        else:
            loss = problem.training_loss(model, batch)
            loss.backward()
        monitor.observe(loss)
        if step % settings.log_every == 0:
            value = loss.item()
            counters["metrics_size"] = run.append_metrics(
                [{"step": step, "split": "minibatch", "loss": value}]
            )
            logger.log({"train/minibatch_loss": value}, step)
            reason = monitor.check([value], [0])[0]
            counters["initial_loss"] = monitor.initial[0]
            if reason:
                status, diverged_step = "diverged", step
                break
            progress.update(step, value)
        optimizer.step()
        scheduler.step()
        if step == start:
            first_step_s = time.perf_counter() - step_started
        step += 1
    progress.close(step)

    # 3. Summary. A partial run keeps a checkpoint at its end: the whole run can go on
    # from there (``RunDir.adopt``).
    partial = settings.stop_at is not None and status == "completed"
    elapsed = counters["elapsed_s"] + time.perf_counter() - started
    if partial and step > start:
        counters.update(monitor.state(), elapsed_s=elapsed)
        counters["metrics_sha256"] = run.metrics_sha256(counters["metrics_size"])
        checkpoint.save(run.checkpoint_file, step=step, model=model, optimizer=optimizer,
                        scheduler=scheduler, runner=counters)  # fmt: skip
    extra = {} if settings.stop_at is None else {"stop_at": settings.stop_at}
    if settings.compile is not None:  # the first step of this session includes compiling
        extra.update(compile=settings.compile, first_step_s=first_step_s)
    result = summary(
        status,
        step,
        settings.num_steps,
        diverged_step=diverged_step,
        reason=reason,
        initial_loss=counters["initial_loss"],
        final=counters["last_eval"],
        train_time_s=elapsed,
        **extra,
    )
    run.write_summary(result)
    if partial:
        checkpoint.previous(run.checkpoint_file).unlink(missing_ok=True)
    elif not settings.keep_checkpoint:
        checkpoint.remove(run.checkpoint_file)
    if status == "diverged":
        log.warning("%s diverged at step %d: %s", run.path, step, reason)
    return result


def _due(every: int | None, step: int) -> bool:
    return every is not None and step % every == 0
