"""Seed-parallel training: K seeds of one CNN problem as one batched computation.

The K networks are built exactly as K single runs build them (``problem.build_model(seed)``),
their parameters are stacked along a new leading dimension (``torch.func.stack_module_state``)
and one ``vmap`` of ``functional_call`` runs all K forward and backward passes at once, each
member on its own batch from its own ``problem.train_batches(seed)`` iterator (its own
shuffle and, for CIFAR-10, its own augmentation draws). The loss of member k is literally
``problem.training_loss`` (mean cross-entropy + the L2 term) evaluated with member k's
parameters, and the backward pass of the sum of the member losses gives each member the
gradient of its own loss. Every optimizer of the project (M-SGD, M-SSD, M-SVAG, SVAG and
``torch.optim.Adam``) is element-wise with per-tensor state and a step counter shared by
all elements, so one optimizer over the stacked tensors is K independent optimizers with the
same step size and schedule. Seed k of a parallel run therefore matches a single run of seed
k to float tolerance (batched convolutions sum in another order); tests/test_parallel.py
checks metrics and final parameters.

``train_parallel`` reads like ``loop.train`` and shares its helpers (``monitor``: the
evaluation rows, the divergence monitor, the summary); per member it records exactly what
a single run records, in that member's ordinary RunDir. A diverged member
(same rules, per member: a non-finite loss, or the running max of its mini-batch loss above
``divergence_factor`` x its own first loss) gets its summary at once and is frozen: its loss
is masked out of the summed loss and its parameter slices are restored after every
optimizer step; the others go on. A group has no mid-run checkpoint: an interrupted group
restarts its unfinished members from step 0 (finished and diverged members keep their
records and are skipped).

``session.execute_seeds`` runs groups (``parallel_seeds=K``); ``plan.check_capabilities``
says which problems and methods can (``Problem.seed_parallel``, ``Method.seed_parallel``).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ..problems import Problem
from ..problems.batching import Batch
from . import checkpoint
from .loggers import NoLogger
from .loop import Interrupted
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


class _Loss(nn.Module):
    """``problem.training_loss`` as a module, so that ``functional_call`` can swap weights."""

    def __init__(self, problem: Problem, model: nn.Module):
        super().__init__()
        self.problem, self.model = problem, model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.problem.training_loss(self.model, Batch(inputs, targets, 0, False))


def train_parallel(
    problem: Problem,
    models: list[nn.Module],
    make_optimizer: Callable,
    settings: TrainSettings,
    seeds: list[int],
    runs: list[RunDir],
    stop: Callable[[], bool] | None = None,
    loggers: list | None = None,
) -> list[dict]:
    """Train member k = (``models[k]``, ``seeds[k]``, ``runs[k]``) for all k at once.

    ``settings.seed`` is unused (each member has its seed). Each run folder must have been
    started (``RunDir.start``). On return ``models[k]`` holds member k's final parameters
    (for a diverged member: those at its divergence) and ``runs[k]`` its summary.
    """
    if settings.stop_at is not None:
        raise ValueError("seed-parallel groups run whole runs only (stop_at must be None)")
    if not problem.seed_parallel:
        raise ValueError(f"{problem.name} cannot train seeds in parallel (seed_parallel=False)")
    K = len(models)
    loggers = loggers or [NoLogger() for _ in range(K)]
    started = time.perf_counter()
    evals = eval_steps(settings.num_steps, settings.eval_every)
    device = next(models[0].parameters()).device

    # 1. Start: stacked parameters (K, ...), one optimizer, one iterator per seed.
    params, buffers = stack_module_state(models)  # leaves, requires_grad
    names = list(params)
    optimizer = make_optimizer([params[n] for n in names])
    scheduler = problem.lr_scheduler(optimizer)
    template = _Loss(problem, copy.deepcopy(models[0]).to("meta"))

    def member_loss(p, b, inputs, targets):
        full = {f"model.{k}": v for k, v in {**p, **b}.items()}
        return functional_call(template, full, (inputs, targets))

    batched_loss = vmap(member_loss)  # (K, ...) params, (K, B, ...) batches -> (K,)
    if settings.compile is not None:  # the K forward and backward passes as one graph
        batched_loss = torch.compile(batched_loss, mode=settings.compile)
    batches = [problem.train_batches(seed) for seed in seeds]
    torch.manual_seed(seeds[0])  # as train() does; these CNNs draw nothing from it
    for run in runs:  # a group restarts every member from step 0 (no group checkpoint)
        run.truncate_metrics(0)
        checkpoint.remove(run.checkpoint_file)  # an older single run's, now stale
    monitor = Divergence(settings.divergence_factor, K)
    finals = [{} for _ in range(K)]
    summaries: list[dict | None] = [None] * K
    frozen: dict[int, list[torch.Tensor]] = {}  # diverged member -> its parameter slices
    alive = torch.ones(K, dtype=torch.bool, device=device)
    last_batch: list[Batch | None] = [None] * K

    def finish(k: int, status: str, step: int, reason: str | None) -> None:
        """Record member k's summary; a diverged member is frozen at its current slices."""
        if status == "diverged":
            frozen[k] = [params[n][k].detach().clone() for n in names]
            alive[k] = False
            log.warning("%s diverged at step %d: %s", runs[k].path, step, reason)
        summaries[k] = summary(
            status,
            step,
            settings.num_steps,
            diverged_step=step if status == "diverged" else None,
            reason=reason,
            initial_loss=monitor.initial[k],
            final=finals[k],
            train_time_s=time.perf_counter() - started,  # the group's time so far
            parallel_group=list(seeds),
        )
        runs[k].write_summary(summaries[k])

    def live() -> list[int]:
        return [k for k in range(K) if summaries[k] is None]

    # 2. The loop.
    progress = Progress(settings.progress, settings.num_steps, 0, settings.log_interval_s)
    step = 0
    while True:
        if step in evals:
            for k in live():
                _load_member(models[k], params, buffers, k)
                rows = evaluation_rows(problem, models[k], step, settings.eval_max_batches)
                runs[k].append_metrics(rows)
                finals[k] = last_eval(rows)
                loggers[k].log({f"{r['split']}/{key}": r[key] for r in rows for key in KEYS}, step)
                reason = non_finite(rows)
                if reason:
                    finish(k, "diverged", step, reason)
        if step >= settings.num_steps or not live():
            break
        if stop is not None and stop():
            progress.close(step)
            raise Interrupted(
                f"seed-parallel group {seeds} stopped at step {step}; there is no group "
                "checkpoint, so a rerun restarts its unfinished members from step 0"
            )

        for k in range(K):  # a frozen member reuses its last batch: no draws, no data time
            if summaries[k] is None or last_batch[k] is None:
                last_batch[k] = next(batches[k])
        inputs = torch.stack([b.inputs for b in last_batch])  # (K, B, C, H, W)
        targets = torch.stack([b.targets for b in last_batch])  # (K, B)
        optimizer.zero_grad(set_to_none=True)
        losses = batched_loss(params, buffers, inputs, targets)  # (K,)
        torch.where(alive, losses, torch.zeros_like(losses)).sum().backward()
        monitor.observe(losses)
        if step % settings.log_every == 0:
            values = losses.tolist()
            for k in live():
                runs[k].append_metrics([{"step": step, "split": "minibatch", "loss": values[k]}])
                loggers[k].log({"train/minibatch_loss": values[k]}, step)
            for k, reason in monitor.check(values, live()).items():
                if reason:
                    finish(k, "diverged", step, reason)
            if live():
                progress.update(step, sum(values[k] for k in live()) / len(live()))
        optimizer.step()
        scheduler.step()
        with torch.no_grad():  # a diverged member stays where it stopped
            for k, slices in frozen.items():
                for n, s in zip(names, slices, strict=True):
                    params[n][k].copy_(s)
        step += 1
    progress.close(step)

    # 3. Summaries of the members that reached the end; final parameters into the models.
    for k in live():
        _load_member(models[k], params, buffers, k)
        finish(k, "completed", step, None)
    for k, slices in frozen.items():
        _load_member(models[k], dict(zip(names, slices, strict=True)), {}, None)
    return summaries


@torch.no_grad()
def _load_member(model: nn.Module, params: dict, buffers: dict, k: int | None) -> None:
    """Copy member k's slices (or, for ``k=None``, unstacked tensors) into ``model``."""
    state = {n: (t if k is None else t[k]) for n, t in {**params, **buffers}.items()}
    for name, tensor in {**dict(model.named_parameters()), **dict(model.named_buffers())}.items():
        if name in state:
            tensor.copy_(state[name])
