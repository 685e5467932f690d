"""The one door between Hydra and the core: ``plan(cfg) -> RunSpec``, and back.

``plan`` validates a composed ``conf/train.yaml`` and resolves it: the problem's config
with its real batch size, step budget (``train.num_steps``, else the profile's, else the
problem's) and schedule (scaled with the budget under ``schedule=paper``), the optimizer's
registered class and all its arguments, the train settings, the profile, seed and data
variant. Capabilities (per-example gradients, seed-parallel training) are checked here,
once. Nothing is loaded or written; bad input raises a ``ConfigError`` that names the
setting and the fix.

``to_overrides(spec)`` is the way back for the Hydra multirun launchers that only take
command lines (the joblib and submitit ones are given RunSpec objects instead,
``protocol.submit``): overrides that plan to the same run (same identity and settings),
every value written by ``override_value`` (strings quoted and escaped, so that paths with
spaces, quotes or ``${`` arrive as they are). ``launcher_settings`` reads a Hydra launcher's
settings (``conf/hydra/launcher``) for those launchers; ``hydra_launchers`` lists them.

Longer than 300 lines: every setting a user types is validated here, in one place, so
that no bad value reaches the core.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from .. import methods
from ..problems import PROBLEMS, load
from .data import resolve_device
from .spec import (
    BudgetRule,
    ConfigError,
    LoggerSpec,
    OptimizerSpec,
    RunSpec,
    TrainSettings,
    compile_mode,
    precision_setting,
)

log = logging.getLogger(__name__)

#: Optimizer arguments that are real numbers even when written as integers (lr=1).
FLOAT_ARGS = ("lr", "beta", "eps", "weight_decay", "momentum")


# --- config -> RunSpec ----------------------------------------------------------------
def plan(cfg: DictConfig) -> RunSpec:
    """Validate ``cfg`` and resolve the run; loads no data and writes nothing."""
    if cfg.data.variant not in ("real", "synthetic"):
        raise ConfigError(f"data.variant must be 'real' or 'synthetic', got {cfg.data.variant!r}")
    optimizer = optimizer_spec(cfg.optimizer)
    name = str(cfg.problem.name)
    given = {k: v for k, v in cfg.problem.items() if k != "name" and v is not None}
    given = OmegaConf.to_container(OmegaConf.create(given), resolve=True)
    try:
        default = load(name, **given)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"problem={name}: {err}") from err

    num_steps = cfg.train.num_steps
    if num_steps is None:
        num_steps = (cfg.profile.num_steps or {}).get(name)
    num_steps = default.num_steps if num_steps is None else int(num_steps)
    sched = cfg.schedule
    milestones = default.config.lr_milestones if sched.milestones is None else sched.milestones
    gamma = default.config.lr_gamma if sched.gamma is None else float(sched.gamma)
    budget = BudgetRule(
        reference_steps=default.num_steps,
        reference_milestones=tuple(int(m) for m in milestones),
        scale_schedule=bool(sched.get("scale_with_budget", False)),
        eval_points=int(cfg.train.eval_points),
        eval_every=None if cfg.train.eval_every is None else int(cfg.train.eval_every),
    )
    if budget.milestones(num_steps) != budget.reference_milestones:
        log.info("%s: schedule scaled to the %d-step budget: milestones %s -> %s", name,
                 num_steps, list(budget.reference_milestones),
                 list(budget.milestones(num_steps)))  # fmt: skip
    try:
        problem_config = dataclasses.replace(
            default.config,
            num_steps=num_steps,
            lr_milestones=budget.milestones(num_steps),
            lr_gamma=gamma,
            data_root=str(cfg.data.root),
            mirror=None if cfg.data.mirror is None else str(cfg.data.mirror),
            device=str(cfg.device),
        )
        train = train_settings(cfg, num_steps, budget.interval(num_steps), name)
    except ValueError as err:
        raise ConfigError(f"train settings: {err}") from err
    spec = RunSpec(
        problem=name,
        problem_config=problem_config,
        optimizer=optimizer,
        train=train,
        budget=budget,
        profile=str(cfg.profile.name),
        data_variant=str(cfg.data.variant),
        results_root=str(cfg.results_root),
        device=str(cfg.device),
        precision=precision_setting(cfg.get("precision", "tf32"), _flag(cfg, "allow_tf32", True)),
        cudnn_benchmark=_flag(cfg, "cudnn_benchmark", True),
        deterministic=_flag(cfg, "deterministic", False),
        flush_denormal=_flag(cfg, "flush_denormal", False),
        force=bool(cfg.force),
        logger=logger_spec(cfg.logger),
        role=str(cfg.get("role", "single")),
    )
    check_capabilities(spec)
    return spec


def optimizer_spec(node: DictConfig) -> OptimizerSpec:
    """The method and its normalised arguments, tried on a dummy parameter (bad lr or beta
    fail here, before any data is loaded)."""
    kwargs = OmegaConf.to_container(node, resolve=True)
    name = kwargs.pop("name")
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith("_")}
    for key in FLOAT_ARGS:
        if isinstance(kwargs.get(key), int) and not isinstance(kwargs[key], bool):
            kwargs[key] = float(kwargs[key])
    try:
        methods.get(name)
    except KeyError as err:
        raise ConfigError(f"optimizer={name}: {err.args[0]}") from err
    spec = OptimizerSpec(name, kwargs)
    try:
        spec.build([torch.zeros(1, requires_grad=True)])
    except (ValueError, TypeError) as err:
        given = ", ".join(f"optimizer.{k}={v}" for k, v in kwargs.items())
        raise ConfigError(
            f"Invalid optimizer settings for {name} ({given}): {err}. "
            "Fix the value on the command line, e.g. optimizer.lr=0.1 (lr > 0, 0 <= beta < 1)."
        ) from err
    return spec


def train_settings(cfg: DictConfig, num_steps: int, eval_every: int, problem: str):
    t = cfg.train
    limit = t.eval_max_batches
    if isinstance(limit, DictConfig):  # the profiles give one per problem
        limit = limit.get(problem)
    return TrainSettings(
        num_steps=num_steps,
        eval_every=eval_every,
        seed=seed_value(cfg.seed),
        log_every=int(t.log_every),
        divergence_factor=None if t.divergence_factor is None else float(t.divergence_factor),
        eval_max_batches=None if limit is None else int(limit),
        checkpoint_every=None if t.checkpoint_every is None else int(t.checkpoint_every),
        keep_checkpoint=bool(t.keep_checkpoint),
        progress=str(t.progress),
        log_interval_s=float(t.log_interval_s),
        stop_at=None if t.get("stop_at") is None else int(t.stop_at),
        compile=compile_mode(t.get("compile")),
        cuda_graph=_flag(t, "cuda_graph", False),
    )


def seed_value(value) -> int:
    """A seed as given, or a ConfigError: ``seed=1.5`` must not run (and answer) as seed 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"seed={value!r} is not a seed; use a whole number >= 0, e.g. seed=3")
    return value


def _flag(cfg: DictConfig, key: str, default: bool) -> bool:
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def logger_spec(node: DictConfig) -> LoggerSpec:
    if node.name == "none":
        return LoggerSpec()
    return LoggerSpec(
        name=str(node.name),
        project=str(node.project),
        entity=node.entity,
        mode=str(node.mode),
        job_type=str(node.job_type),
        tags=tuple(node.tags or ()),
        dir=node.dir,
    )


def plan_seeds(cfg: DictConfig) -> tuple[list[RunSpec], int]:
    """``seed``, or each of ``seeds``, as RunSpecs; and ``parallel_seeds`` (checked)."""
    k = cfg.get("parallel_seeds", 1)
    seeds = cfg.get("seeds")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"parallel_seeds must be an integer >= 1 (1: off), got {k!r}")
    if seeds is None:
        seeds = [cfg.seed]
    elif not OmegaConf.is_list(seeds) or not all(type(s) is int for s in seeds) or not seeds:
        raise ConfigError(f"seeds must be a list of integers, e.g. 'seeds=[0,1,2]', got {seeds}")
    seeds = [seed_value(s) for s in seeds]
    spec = plan(cfg)
    check_capabilities(spec, k)
    return [spec.derive(seed=s) for s in dict.fromkeys(seeds)], k


# --- capabilities: the one place ------------------------------------------------------
def check_capabilities(spec: RunSpec, parallel_seeds: int = 1) -> None:
    """Raise a ConfigError when this run (K seeds at a time) cannot be done."""
    method, problem = spec.optimizer.method, PROBLEMS[spec.problem]
    if method.per_example and not problem.per_example_gradients:
        raise ConfigError(
            f"optimizer={method.name} estimates the gradient variance from per-example "
            f"gradients, which are not defined for problem={spec.problem} (BatchNorm in "
            "training mode mixes the examples of a mini-batch). Use optimizer=msvag or "
            "optimizer=svag (moving-average variance) on this problem."
        )
    if getattr(spec.problem_config, "fused_bn_relu", False):
        _check_fused_bn_relu(spec)
    if parallel_seeds == 1:
        return
    k = parallel_seeds
    if not problem.seed_parallel:
        supported = ", ".join(n for n, p in PROBLEMS.items() if p.seed_parallel)
        raise ConfigError(
            f"parallel_seeds={k} supports the problems {supported}, not {spec.problem} "
            "(no batched loss); use parallel_seeds=1, or hydra multirun "
            "(-m seed=...) to run seeds side by side"
        )
    if not method.seed_parallel:
        raise ConfigError(
            f"parallel_seeds={k} does not support optimizer={method.name} (per-example "
            "gradients of K stacked networks); use parallel_seeds=1"
        )


def _check_fused_bn_relu(spec: RunSpec) -> None:
    from ..problems.models.bn_relu import kernels_available

    if spec.train.compile is not None:
        raise ConfigError(
            f"problem.fused_bn_relu=true and train.compile={spec.train.compile} both fuse "
            "batch norm and ReLU; use one of them (problem.fused_bn_relu=false or "
            "train.compile=false)"
        )
    why = kernels_available(resolve_device(spec.device))
    if why is not None:
        raise ConfigError(
            f"problem.fused_bn_relu=true: {why}; use problem.fused_bn_relu=false here"
        )


def can_run(spec: RunSpec, parallel_seeds: int = 1) -> bool:
    try:
        check_capabilities(spec, parallel_seeds)
    except ConfigError:
        return False
    return True


# --- RunSpec -> overrides (Hydra multirun launchers) ----------------------------------
def to_overrides(spec: RunSpec) -> list[str]:
    """Command-line overrides of ``conf/train.yaml`` that ``plan`` turns into ``spec``.

    The resolved values travel, not their sources: the schedule as explicit milestones
    (``schedule=piecewise``), the budget and evaluation interval as numbers.
    """
    pc = spec.problem_config
    out = [
        f"problem={spec.problem}",
        f"optimizer={spec.optimizer.name}",
        f"profile={spec.profile}",
        f"seed={spec.seed}",
        # lr is in every optimizer's config (and swept by launchers); the rest may be added.
        *(
            f"{'' if k == 'lr' else '++'}optimizer.{k}={override_value(v)}"
            for k, v in spec.optimizer.kwargs.items()
        ),  # fmt: skip
        "schedule=piecewise",
        f"schedule.milestones={override_value(list(pc.lr_milestones))}",
        f"schedule.gamma={override_value(pc.lr_gamma)}",
    ]
    skip = ("num_steps", "lr_milestones", "lr_gamma", "data_root", "mirror", "device")
    for f in dataclasses.fields(pc):
        if f.name not in skip:
            out.append(f"++problem.{f.name}={override_value(getattr(pc, f.name))}")
    for f in dataclasses.fields(spec.train):  # each is a train.* setting of conf/train.yaml
        if f.name != "seed":
            out.append(f"train.{f.name}={override_value(getattr(spec.train, f.name))}")
    out += [
        f"data.root={override_value(pc.data_root)}",
        f"data.mirror={override_value(pc.mirror)}",
        f"data.variant={spec.data_variant}",
        f"results_root={override_value(spec.results_root)}",
        f"device={override_value(spec.device)}",
        f"precision={override_value(spec.precision)}",
        f"cudnn_benchmark={override_value(spec.cudnn_benchmark)}",
        f"deterministic={override_value(spec.deterministic)}",
        f"flush_denormal={override_value(spec.flush_denormal)}",
        f"logger={spec.logger.name}",
        f"role={spec.role}",
    ]
    if spec.logger.name != "none":
        lg = spec.logger
        out += [f"logger.{k}={override_value(getattr(lg, k))}" for k in
                ("project", "entity", "mode", "job_type", "tags", "dir")]  # fmt: skip
    return out


def override_value(v) -> str:
    """``v`` in Hydra's override grammar, read back as ``v``: strings quoted, with ``'``
    escaped, backslashes doubled where the grammar reads them (before a quote, before
    ``${``, at the end) and ``${`` escaped (a path is never an interpolation)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(override_value(x) for x in v) + "]"
    escaped = _SPECIAL.sub(lambda m: m[1] * 2 + {"'": "\\'", "${": "\\${"}.get(m[2], ""), str(v))
    return f"'{escaped}'"


#: A run of backslashes (maybe none) before what the override grammar (a quote, the end)
#: or OmegaConf (an interpolation) would read as an escape.
_SPECIAL = re.compile(r"(\\*)('|\$\{|$)")


class OverridesError(ConfigError):
    """Hydra cannot apply the overrides to ``conf/train.yaml`` (one line: Hydra's reason)."""


# --- Hydra's launchers (the reproduction's launcher setting) ---------------------------
def hydra_launchers() -> list[str] | None:
    """The Hydra launchers available (conf/hydra/launcher and installed plugins), or None
    when Hydra is not initialised (then they are not checked)."""
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():
        return None
    return GlobalHydra.instance().config_loader().get_group_options("hydra/launcher")


def launcher_settings(name: str, overrides: list[str], results_root: str) -> dict:
    """``hydra.launcher`` of ``conf/train.yaml`` with ``hydra/launcher=name`` and
    ``overrides`` (``hydra.launcher.partition=gpu``), resolved (its folders under
    ``results_root``): what the Hydra plugin would be built from (``_target_`` names it).
    Hydra must be initialised."""
    from hydra import compose
    from hydra.errors import HydraException

    try:
        cfg = compose("train", overrides=[
            f"hydra/launcher={name}", "hydra.job.name=train",
            f"results_root={override_value(results_root)}", *overrides,
        ], return_hydra_config=True)  # fmt: skip
        return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    except HydraException as err:
        raise ConfigError(
            f"launcher_overrides={overrides} cannot be applied to launcher={name}: "
            f"{' '.join(str(err).split())}; fix them (e.g. 'hydra.launcher.partition=gpu')"
        ) from None


# --- outside @hydra.main (the GPU check, notebooks) ----------------------------------
@contextlib.contextmanager
def hydra_at(conf_dir: Path):
    """Hydra initialised on the config folder ``conf_dir`` for the duration of the block."""
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
        yield


def composed(name: str, overrides: list[str]) -> DictConfig:
    """``conf/<name>.yaml`` with ``overrides`` (inside ``hydra_at`` or ``@hydra.main``)."""
    from hydra import compose

    return compose(name, overrides=list(overrides))


# --- many runs at once (the reproduction driver) --------------------------------------
def plan_pairs(pairs, overrides: list[str]) -> dict[tuple[str, str], RunSpec | ConfigError]:
    """The base RunSpec of each (problem, optimizer) from ``conf/train.yaml`` with
    ``overrides`` (Hydra must be initialised, as it is inside ``@hydra.main``); a pair that
    cannot run gets its ConfigError instead.

    Composing is the slow part (~0.1 s each), so ``conf/train.yaml`` is composed once per
    problem and once per optimizer, and each pair takes its problem's config with its
    optimizer's node: the optimizer group and ``optimizer.*`` overrides set that node alone
    (``tests/test_spec.py`` checks the result equals composing every pair).
    """
    from hydra import compose
    from hydra.errors import HydraException, MissingConfigException

    def composed(problem: str, optimizer: str) -> DictConfig:
        try:
            return compose("train", overrides=[f"problem={problem}", f"optimizer={optimizer}",
                                               *overrides])  # fmt: skip
        except MissingConfigException as err:
            raise ConfigError(f"{problem}/{optimizer}: {err}") from err
        except HydraException as err:  # e.g. an override of a key conf/train.yaml lacks
            raise OverridesError(" ".join(str(err).split())) from None

    problems = list(dict.fromkeys(p for p, _ in pairs))
    optimizers = list(dict.fromkeys(o for _, o in pairs))
    by_problem = {p: composed(p, optimizers[0]) for p in problems}
    nodes = {o: by_problem[problems[0]].optimizer if i == 0 else composed(problems[0], o).optimizer
             for i, o in enumerate(optimizers)}  # fmt: skip
    out = {}
    for problem, optimizer in pairs:
        cfg = by_problem[problem].copy()
        with open_dict(cfg):
            cfg.optimizer = nodes[optimizer]
        try:
            out[(problem, optimizer)] = plan(cfg)
        except ConfigError as err:
            out[(problem, optimizer)] = err
    return out
