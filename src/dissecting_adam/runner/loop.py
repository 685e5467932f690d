"""The training loop: K members of one problem and one method (K = 1: a single run), each
recorded in its own RunDir as a single run would be.

``train`` receives built objects (problem, members, an engine from ``engine``, settings)
and reads top to bottom:

1. resume each member from its checkpoint payload (model, optimizer, scheduler, RNGs, data
   position in constant time, LSTM state; all members of a group at the same step), else
   start: the RNGs as a single run seeds them;
2. loop: evaluate at the fixed evaluation steps (step 0 and the last step included) on the
   test set and the train-eval subset, member by member; checkpoint every member at its
   interval; draw each member's batch from its own iterator, compute the K losses and
   their gradients; every ``log_every`` steps record each member's mini-batch loss and
   check the largest loss since the last check for divergence; take the optimizer and
   scheduler step;
3. write each member's summary.json (``completed`` or ``diverged``).

A diverged member (a non-finite loss, or a mini-batch loss above ``divergence_factor``
times its first one) stops at once and is recorded with its step; the others go on. A
member's checkpoint is in the single-run format, so members and single runs resume as
each other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..problems import Problem
from . import backend, checkpoint, files, graphs
from . import engine as engines
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


class Regroup(Exception):
    """A member's checkpoint could not be restored (it was moved aside): its group no longer
    starts at one step, so the caller forms the groups again."""


@dataclass
class Member:
    """One run of a group: its record, logger and seed, and what the loop keeps of it."""

    run: RunDir
    seed: int
    logger: Logger = field(default_factory=NoLogger)
    counters: dict = field(default_factory=dict)
    summary: dict | None = None


def resume_payload(run: RunDir) -> dict | None:
    """The run's usable checkpoint payload, or None (start from step 0).

    A checkpoint resumes only onto the metrics it was written after: a shortened or changed
    metrics.jsonl would otherwise end as a completed run with holes. When no checkpoint
    matches, the damaged metrics file is kept aside and the run starts again.
    """
    refused = []

    def accept(saved: dict) -> str | None:
        reason = run.metrics_match(saved.get("metrics_size", 0), saved.get("metrics_sha256"))
        refused.extend([reason] if reason else [])
        return reason

    payload = checkpoint.load_usable(run.checkpoint_file, accept)
    if payload is None and refused and run.metrics_file.exists():
        log.warning("%s: the run starts again from step 0 (the damaged metrics file is kept "
                    "as %s)", refused[0], files.move_aside(run.metrics_file))  # fmt: skip
    return payload


def train(
    problem: Problem,
    members: Sequence[Member],
    engine,
    settings: TrainSettings,
    payloads: Sequence[dict | None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> list[dict]:
    """Train, evaluate and record every member; return their summaries (also written).

    ``payloads[k]`` is member k's checkpoint (``resume_payload``) or None; in a group they
    are all None or all of one step. ``stop`` is polled once per step; when it returns True
    (SIGTERM, e.g. a SLURM time limit) every member checkpoints at that step and
    ``Interrupted`` is raised.
    """
    K = len(members)
    payloads = list(payloads) if payloads is not None else [None] * K
    started = time.perf_counter()
    end = settings.end  # the budget, or where a partial run (a probe) stops
    evals = {s for s in eval_steps(settings.num_steps, settings.eval_every) if s <= end} | {end}
    monitor = Divergence(settings.divergence_factor, K)
    device = engine.device

    # 1. Resume or start.
    start = _resume(engine, members, payloads, monitor)
    batches = [_batches(problem, m.seed, p, start) for m, p in zip(members, payloads, strict=True)]
    if start:
        log.info("resumed %s at step %d", ", ".join(str(m.run.path) for m in members), start)

    # 2. The loop.
    graphs = backend.uses_cuda_graphs(settings.compile, device.type)
    first_step_s = None  # of this session: includes compiling a compiled model
    progress = Progress(settings.progress, end, start, settings.log_interval_s)
    alive = torch.ones(K, dtype=torch.bool, device=device)
    last_batch = [None] * K

    def live() -> list[int]:
        return [k for k in range(K) if members[k].summary is None]

    def finish(k: int, status: str, step: int, reason: str | None) -> None:
        m = members[k]
        if status == "diverged":
            engine.freeze(k)
            alive[k] = False
            log.warning("%s diverged at step %d: %s", m.run.path, step, reason)
        elapsed = m.counters["elapsed_s"] + time.perf_counter() - started
        extra = {} if settings.stop_at is None else {"stop_at": settings.stop_at}
        if settings.compile is not None:  # the first step of this session includes compiling
            extra.update(compile=settings.compile, first_step_s=first_step_s)
        if K > 1:  # who trained together: seeds, and step sizes where they differ
            extra["parallel_group"] = [x.seed for x in members]
            if len(set(getattr(engine, "lrs", ()))) > 1:
                extra["parallel_lrs"] = list(engine.lrs)
        m.summary = summary(status, step, settings.num_steps,
                            diverged_step=step if status == "diverged" else None, reason=reason,
                            initial_loss=monitor.initial[k], final=m.counters["last_eval"],
                            train_time_s=elapsed, **extra)  # fmt: skip
        partial = settings.stop_at is not None and status == "completed"
        if partial and step > start:  # the whole run can go on from here (RunDir.adopt)
            _save(engine, members, k, step, monitor, started, batches[k])
        m.run.write_summary(m.summary)
        if partial:
            checkpoint.previous(m.run.checkpoint_file).unlink(missing_ok=True)
        elif not settings.keep_checkpoint:
            checkpoint.remove(m.run.checkpoint_file)

    step = start
    while True:
        if step in evals and not (step == start and start > 0):
            for k in live():
                m = members[k]
                with engine.autocast():  # evaluation in the run's precision, as training
                    rows = evaluation_rows(problem, engine.model_of(k), step,
                                           settings.eval_max_batches)  # fmt: skip
                m.counters["metrics_size"] = m.run.append_metrics(rows)
                m.counters["last_eval"] = last_eval(rows)
                m.logger.log({f"{r['split']}/{key}": r[key] for r in rows for key in KEYS}, step)
                reason = non_finite(rows)
                if reason:
                    finish(k, "diverged", step, reason)
        if step >= end or not live():
            break
        stopping = stop is not None and stop()
        if (_due(settings.checkpoint_every, step) or stopping) and step > start:
            for k in live():
                _save(engine, members, k, step, monitor, started, batches[k])
        if stopping:
            progress.close(step)
            where = ", ".join(str(members[k].run.path) for k in live())
            raise Interrupted(f"{where} stopped at step {step}; rerun to resume")

        if step == start:
            step_started = time.perf_counter()
        for k in range(K):  # a frozen member reuses its last batch: no draws, no data time
            if members[k].summary is None or last_batch[k] is None:
                last_batch[k] = next(batches[k])
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        losses = engine.losses(last_batch, alive)
        monitor.observe(losses)
        if step % settings.log_every == 0:
            values = losses.tolist()
            for k in live():
                members[k].counters["metrics_size"] = members[k].run.append_metrics(
                    [{"step": step, "split": "minibatch", "loss": values[k]}]
                )
                members[k].logger.log({"train/minibatch_loss": values[k]}, step)
            for k, reason in monitor.check(values, live()).items():
                members[k].counters["initial_loss"] = monitor.initial[k]
                if reason:
                    finish(k, "diverged", step, reason)
            if live():
                progress.update(step, sum(values[k] for k in live()) / len(live()))
        if live():  # a single run that diverged stops before the step
            engine.step()
        if step == start:
            first_step_s = time.perf_counter() - step_started
        step += 1
    progress.close(step)

    # 3. Summaries of the members that reached the end.
    for k in live():
        finish(k, "completed", step, None)
    return [m.summary for m in members]


def train_single(problem: Problem, model: torch.nn.Module, optimizer, scheduler,
                 settings: TrainSettings, run: RunDir, logger: Logger | None = None,
                 stop: Callable[[], bool] | None = None) -> dict:  # fmt: skip
    """One run of built objects, resumed from its checkpoint if it has one (benchmarks and
    tests; the runner goes through ``session``). The run folder must exist."""
    single = (graphs.GraphedSingle if settings.cuda_graph else engines.Single)(
        problem, model, optimizer, scheduler, settings.seed)  # fmt: skip
    member = Member(run, settings.seed, logger or NoLogger())
    return train(problem, [member], single, settings, [resume_payload(run)], stop)[0]


def train_group(problem: Problem, models: list[torch.nn.Module], build_optimizer: Callable,
                settings: TrainSettings, seeds: Sequence[int], runs: Sequence[RunDir],
                lrs: Sequence[float],
                stop: Callable[[], bool] | None = None) -> list[dict]:  # fmt: skip
    """K runs of built models as one group (``build_optimizer(params, lr)``), each resumed
    from its checkpoint if all have one of the same step (benchmarks and tests)."""
    stacked = (graphs.GraphedStacked if settings.cuda_graph else engines.Stacked)(
        problem, models, build_optimizer, lrs, seeds, settings.compile)  # fmt: skip
    members = [Member(run, seed) for run, seed in zip(runs, seeds, strict=True)]
    payloads = [resume_payload(run) for run in runs]
    return train(problem, members, stacked, settings, payloads, stop)


def _resume(engine, members, payloads, monitor: Divergence) -> int:
    """Restore every member from its payload (or start it); return the common step."""
    steps = {0 if p is None else int(p["step"]) for p in payloads}
    if len(steps) > 1:
        raise ValueError(f"the members of a group must resume at one step, not {sorted(steps)}")
    fresh = {"initial_loss": None, "elapsed_s": 0.0, "metrics_size": 0, "last_eval": {}}
    if payloads[0] is None:
        engine.start()
        for m in members:
            m.counters = dict(fresh)
            m.run.truncate_metrics(0)
        return 0
    try:
        engine.restore(payloads)
    except Exception as err:  # another method's checkpoint, a model of another shape
        for p in payloads:
            checkpoint.move_unusable(p["path"], err)
        if len(members) > 1:
            raise Regroup(str(err)) from err
        engine.start()
        members[0].counters = dict(fresh)
        members[0].run.truncate_metrics(0)
        payloads[0] = None  # nor its data position
        return 0
    for k, (m, p) in enumerate(zip(members, payloads, strict=True)):
        m.counters = p["runner"]
        monitor.restore(k, m.counters, engine.device)  # the window open then
        m.run.truncate_metrics(m.counters["metrics_size"])  # drop rows written after it
    return steps.pop()


def _batches(problem: Problem, seed: int, payload: dict | None, start: int):
    """Member's batches from where its checkpoint left them: in constant time from the
    position it saved, else (a checkpoint from before positions were saved) by drawing
    ``start`` batches again, which gives the same position."""
    state = None if payload is None else payload.get("data")
    if state is not None:
        try:
            return problem.train_batches(seed, state=state)
        except ValueError as err:
            log.warning("the checkpoint's data position cannot be used (%s); replaying "
                        "%d batches instead", err, start)  # fmt: skip
    batches = problem.train_batches(seed)
    if hasattr(batches, "skip"):
        batches.skip(start)
    else:  # a plain iterator (tests may replace train_batches)
        checkpoint.skip(batches, start)
    return batches


def _save(engine, members, k: int, step: int, monitor: Divergence, started: float,
          batches) -> None:  # fmt: skip
    m = members[k]
    now = time.perf_counter()
    counters = {**m.counters, **monitor.state(k)}
    counters["elapsed_s"] = m.counters["elapsed_s"] + now - started
    counters["metrics_sha256"] = m.run.metrics_sha256(counters["metrics_size"])
    payload = engine.capture(k)
    if hasattr(batches, "state"):  # the data position: resumes in constant time
        payload["data"] = batches.state()
    checkpoint.save(m.run.checkpoint_file, step=step, payload=payload, runner=counters)


def _due(every: int | None, step: int) -> bool:
    return every is not None and step % every == 0
