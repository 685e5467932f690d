"""From a composed Hydra config to built objects, and the single-run path around ``train``.

``plan(cfg)`` validates the config and derives everything a run is (problem, optimizer
factory, settings, identity, run folder) without loading data or touching the store, so
that bad input fails fast and a sweep driver (the step-size search) can look a run up.
``execute(cfg)`` is the whole run: check the results directory, return at once if this
exact config has finished, else train (resuming from a checkpoint) and record the session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from . import parallel
from . import store as results
from .environment import environment
from .loggers import NoLogger, WandbLogger
from ..problems import Problem, load
from ..problems.datasets import synthetic
from .store import RunDir
from .loop import Interrupted, TrainSettings, default_eval_every, train

log = logging.getLogger(__name__)

#: Problem settings that do not change a run's result (paths, device, memory use).
NOT_IDENTITY = ("data_root", "mirror", "device", "eval_batch_size")

#: Optimizer arguments that are real numbers even when written as integers (lr=1).
FLOAT_ARGS = ("lr", "beta", "eps", "weight_decay", "momentum")


class ConfigError(ValueError):
    """Bad input in the run's config; the message names the setting and the fix."""


@dataclass
class RunPlan:
    """Everything one run is, built from a config; nothing loaded, nothing written yet."""

    problem: Problem
    optimizer_name: str
    make_optimizer: functools.partial
    optimizer_kwargs: dict
    settings: TrainSettings
    identity: dict
    run: RunDir
    results_root: Path
    device: str


# --- building ---------------------------------------------------------------------------
def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def optimizer_parts(cfg: DictConfig) -> tuple[str, functools.partial, dict]:
    """The optimizer's name, a factory ``params -> optimizer`` and its (normalised) kwargs.

    The factory is tried on a dummy parameter, so an invalid lr or beta fails here, before
    any data is loaded.
    """
    node = OmegaConf.to_container(cfg.optimizer, resolve=True)
    name = node.pop("name")
    kwargs = {k: v for k, v in node.items() if not k.startswith("_")}
    for key in FLOAT_ARGS:
        if isinstance(kwargs.get(key), int) and not isinstance(kwargs[key], bool):
            kwargs[key] = float(kwargs[key])
    factory = hydra.utils.instantiate({**node, **kwargs})
    try:
        factory([torch.zeros(1, requires_grad=True)])
    except (ValueError, TypeError) as err:
        given = ", ".join(f"optimizer.{k}={v}" for k, v in kwargs.items())
        raise ConfigError(
            f"Invalid optimizer settings for {name} ({given}): {err}. "
            "Fix the value on the command line, e.g. optimizer.lr=0.1 (lr > 0, 0 <= beta < 1)."
        ) from err
    return name, factory, kwargs


def schedule_overrides(cfg: DictConfig, default_steps: int, num_steps: int) -> tuple[dict, bool]:
    """``lr_milestones``/``lr_gamma`` overrides, and whether to scale them to the budget."""
    sched = cfg.schedule
    out = {}
    if sched.milestones is not None:
        out["lr_milestones"] = [int(m) for m in sched.milestones]
    if sched.gamma is not None:
        out["lr_gamma"] = float(sched.gamma)
    return out, bool(sched.get("scale_with_budget", False)) and num_steps != default_steps


def build_problem(cfg: DictConfig, device: str, source=None) -> Problem:
    """The problem with its config overrides, the profile's budget and the schedule."""
    name = cfg.problem.name
    given = {k: v for k, v in cfg.problem.items() if k != "name" and v is not None}
    given = OmegaConf.to_container(OmegaConf.create(given), resolve=True)
    paths = {"data_root": cfg.data.root, "mirror": cfg.data.mirror, "device": device}
    try:
        default = load(name, **given)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"problem={name}: {err}") from err
    num_steps = cfg.train.num_steps
    if num_steps is None:
        num_steps = (cfg.profile.num_steps or {}).get(name)
    num_steps = default.num_steps if num_steps is None else int(num_steps)
    sched, scale = schedule_overrides(cfg, default.num_steps, num_steps)
    if scale:
        milestones = sched.get("lr_milestones", default.config.lr_milestones)
        ratio = num_steps / default.num_steps
        sched["lr_milestones"] = [round(m * ratio) for m in milestones]
    problem = load(name, source=source, num_steps=num_steps, **paths, **given, **sched)
    limit = eval_limit(cfg, name)
    if limit is not None:
        limit_evaluation(problem, limit)
    return problem


def eval_limit(cfg: DictConfig, name: str) -> int | None:
    """``train.eval_max_batches``: a number, or a mapping problem -> number (profiles)."""
    limit = cfg.train.eval_max_batches
    if isinstance(limit, DictConfig):
        limit = limit.get(name)
    return None if limit is None else int(limit)


def limit_evaluation(problem: Problem, max_batches: int) -> None:
    """Evaluate on the first ``max_batches`` batches of each split only (smoke/preview)."""
    full = problem.eval_batches
    problem.eval_batches = lambda split: itertools.islice(full(split), max_batches)


def train_settings(cfg: DictConfig, num_steps: int) -> TrainSettings:
    t = cfg.train
    every = t.eval_every or default_eval_every(num_steps, t.eval_points)
    try:
        return TrainSettings(
            num_steps=num_steps,
            eval_every=int(every),
            seed=int(cfg.seed),
            log_every=int(t.log_every),
            divergence_factor=None if t.divergence_factor is None else float(t.divergence_factor),
            checkpoint_every=None if t.checkpoint_every is None else int(t.checkpoint_every),
            keep_checkpoint=bool(t.keep_checkpoint),
            progress=str(t.progress),
            log_interval_s=float(t.log_interval_s),
        )
    except ValueError as err:
        raise ConfigError(f"train settings: {err}") from err


def identity(cfg: DictConfig, problem: Problem, opt_name, opt_kwargs, settings) -> dict:
    """Everything that can change a run's recorded result (and nothing else)."""
    config = {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in dataclasses.asdict(problem.config).items()
        if k not in NOT_IDENTITY
    }
    return {
        "profile": str(cfg.profile.name),
        "problem": problem.name,
        "problem_config": config,
        "data_variant": str(cfg.data.variant),
        "optimizer": opt_name,
        "optimizer_kwargs": opt_kwargs,
        "optimizer_target": str(cfg.optimizer._target_),
        "seed": settings.seed,
        "train": {
            "num_steps": settings.num_steps,
            "eval_every": settings.eval_every,
            "eval_max_batches": eval_limit(cfg, problem.name),
            "log_every": settings.log_every,
            "divergence_factor": settings.divergence_factor,
        },
    }


def plan(cfg: DictConfig, source=None) -> RunPlan:
    """Validate ``cfg`` and derive the run; loads no data and writes nothing."""
    if cfg.data.variant not in ("real", "synthetic"):
        raise ConfigError(f"data.variant must be 'real' or 'synthetic', got {cfg.data.variant!r}")
    opt_name, factory, kwargs = optimizer_parts(cfg)
    device = resolve_device(str(cfg.device))
    problem = build_problem(cfg, device, source)
    if getattr(factory.func, "needs_batch_variance", False) and not problem.per_example_gradients:
        raise ConfigError(
            f"optimizer={opt_name} estimates the gradient variance from per-example gradients, "
            f"which are not defined for problem={problem.name} (BatchNorm in training mode "
            "mixes the examples of a mini-batch). Use optimizer=msvag or optimizer=svag "
            "(moving-average variance) on this problem."
        )
    settings = train_settings(cfg, problem.num_steps)
    ident = identity(cfg, problem, opt_name, kwargs, settings)
    root = Path(cfg.results_root)
    run = RunDir.for_identity(root, ident)
    return RunPlan(problem, opt_name, factory, kwargs, settings, ident, run, root, device)


# --- running ----------------------------------------------------------------------------
def synthetic_sources(folder: Path) -> dict:
    """Generated stand-ins for the four data sets (tests and smoke checks only)."""
    text = "".join(
        f"Line {i}: Well, Prince, so Genoa and Lucca are now family estates.\n" for i in range(80)
    )
    return {
        "fmnist_2c2d": synthetic.write_fashion_mnist(folder, n_train=64, n_test=32),
        "cifar10_3c3d": synthetic.write_cifar(folder, "cifar-10", n_train=64, n_test=32),
        "cifar100_wrn404": synthetic.write_cifar(folder, "cifar-100", n_train=16, n_test=8),
        "tolstoi_char_rnn": synthetic.write_text(folder, text),
    }


@contextlib.contextmanager
def data_source(cfg: DictConfig):
    """Yield ``(cfg, source)``: for ``data.variant=synthetic`` generated files in a temp folder."""
    if cfg.data.variant != "synthetic":
        yield cfg, None
        return
    with tempfile.TemporaryDirectory(prefix="synthetic-") as folder:
        source = synthetic_sources(Path(folder))[cfg.problem.name]
        yield OmegaConf.merge(cfg, {"data": {"mirror": folder, "root": folder}}), source


def configure_device(cfg: DictConfig, device: str) -> None:
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = bool(cfg.allow_tf32)
        torch.backends.cudnn.allow_tf32 = bool(cfg.allow_tf32)


def make_logger(cfg: DictConfig, p: RunPlan):
    if cfg.logger.name == "none":
        return NoLogger()
    lr = results.format_lr(p.optimizer_kwargs["lr"])
    return WandbLogger(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        mode=cfg.logger.mode,
        job_type=cfg.logger.job_type,
        tags=list(cfg.logger.tags or []),
        dir=cfg.logger.dir,
        group=f"{p.problem.name}/{p.optimizer_name}/lr={lr}",
        name=f"{p.problem.name}/{p.optimizer_name}/lr={lr}/seed={p.settings.seed}",
        config={**OmegaConf.to_container(cfg, resolve=True), "identity": p.identity},
    )


def execute(cfg: DictConfig) -> dict:
    """One run from a composed config: skip if finished, else train (resuming) and record.

    Returns the summary, with ``skipped: True`` when the record already existed.
    """
    with data_source(cfg) as (cfg, source):
        p = plan(cfg, source)
        results.check_writable(p.results_root)
        if p.run.is_finished(p.identity) and not cfg.force:
            summary = p.run.summary()
            log.info(
                "%s: already %s, nothing to do (force=true reruns it)",
                p.run.path,
                summary["status"],
            )
            return {**summary, "skipped": True, "run_dir": str(p.run.path)}
        p.run.start(p.identity, OmegaConf.to_yaml(cfg, resolve=True), force=bool(cfg.force))
        configure_device(cfg, p.device)
        session = {"start": _now(), "device": p.device, "resumed": p.run.checkpoint_file.exists()}
        t0 = time.perf_counter()
        model = p.problem.build_model(p.settings.seed)
        optimizer = p.make_optimizer(model.parameters())
        scheduler = p.problem.lr_scheduler(optimizer)
        logger = make_logger(cfg, p)
        summary = {"status": "failed"}
        try:
            with stop_on_sigterm() as stop:
                summary = train(
                    p.problem, model, optimizer, scheduler, p.settings, p.run, logger, stop
                )
        except Interrupted:
            summary = {"status": "interrupted"}
            raise
        except Exception as err:
            summary = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
            p.run.write_summary(summary)
            raise
        finally:
            session.update(end=_now(), wall_time_s=time.perf_counter() - t0)
            session["status"] = summary["status"]
            p.run.add_session({**session, **_env_device(p.device)})
            logger.finish(summary)
        return {**summary, "skipped": False, "run_dir": str(p.run.path)}


def execute_all(cfg: DictConfig) -> list[dict]:
    """``seed``, or each of ``seeds`` in groups of ``parallel_seeds``; one summary per seed.

    Finished seeds are skipped first (``force=true`` reruns them), then the rest train in
    groups of K (``parallel.execute_group``); a group of one is an ordinary single run.
    """
    k = cfg.get("parallel_seeds", 1)
    seeds = cfg.get("seeds")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"parallel_seeds must be an integer >= 1 (1: off), got {k!r}")
    if seeds is None:
        seeds = [cfg.seed]
    elif not OmegaConf.is_list(seeds) or not all(type(s) is int for s in seeds) or not seeds:
        raise ConfigError(f"seeds must be a list of integers, e.g. 'seeds=[0,1,2]', got {seeds}")
    seeds = list(dict.fromkeys(seeds))
    parallel.check(cfg, k)
    summaries, todo = {}, []
    for seed in seeds:
        one = OmegaConf.merge(cfg, {"seed": seed})
        if k > 1 and not cfg.force and (p := plan(one)).run.is_finished(p.identity):
            summaries[seed] = execute(one)  # skips at once and says so
        else:
            todo.append(seed)
    for i in range(0, len(todo), k):
        group = todo[i : i + k]
        if len(group) == 1:
            summaries[group[0]] = execute(OmegaConf.merge(cfg, {"seed": group[0]}))
        else:
            summaries.update(zip(group, parallel.execute_group(cfg, group), strict=True))
    return [summaries[s] for s in seeds]


@contextlib.contextmanager
def stop_on_sigterm():
    """Yield a ``stop()`` poll that turns True after SIGTERM (main thread only)."""
    received = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        yield lambda: bool(received)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _env_device(device: str) -> dict:
    env = environment(device)
    return {"device_name": env.get("device_name"), "host": env["host"]}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
