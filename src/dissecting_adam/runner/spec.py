"""The RunSpec: a typed, frozen, fully resolved record of everything that defines one run.

``runner.plan.plan(cfg)`` is the only way from a Hydra config to a RunSpec; everything
below it (the session, the loop, the store, the reproduction driver) takes RunSpecs. A
driver derives the runs it needs from one with ``derive`` (another step size, seed or
step budget) and finds them in the store by ``identity()``, without composing a config
again. The run record's ``config.yaml`` is ``to_dict()`` of its RunSpec.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import methods
from ..problems import PROBLEMS, ProblemConfig
from .backend import PRECISIONS
from .records import IDENTITY_VERSION

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """Bad input in a run's config; the message names the setting and the fix."""


#: Problem settings that do not change a run's result (paths, device, memory use, which
#: kernels compute the same function: their float rounding differs, as cuDNN's choices do).
NOT_IDENTITY = (
    "data_root", "mirror", "device", "eval_batch_size", "channels_last", "fused_bn_relu",
)  # fmt: skip


#: ``train.compile`` modes (torch.compile's); None: eager.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(value) -> str | None:
    """``train.compile``: false/null (eager), true (torch.compile's default mode) or a mode."""
    if value is None or value is False:
        return None
    if value is True:
        return "default"
    if value not in COMPILE_MODES:
        raise ConfigError(
            f"train.compile={value!r} is not a compile setting; use false, true or one of "
            + ", ".join(COMPILE_MODES)
        )
    return str(value)


def precision_setting(precision="tf32", allow_tf32: bool | None = None) -> str:
    """``precision`` (fp32, tf32, bf16), with the deprecated ``allow_tf32=false`` read as
    ``precision=fp32`` (true or null: no say; TF32 is then the precision's own)."""
    if precision not in PRECISIONS:
        raise ConfigError(
            f"precision={precision!r} is not a precision; use one of {', '.join(PRECISIONS)} "
            '(docs/runner.md, "Precision")'
        )
    if allow_tf32 is None or allow_tf32 is True:
        return str(precision)
    if allow_tf32 is not False:
        raise ConfigError(f"allow_tf32 must be true or false, got {allow_tf32!r}; use precision")
    if precision == "fp32":  # already said (or a record read back): nothing to note
        return "fp32"
    if precision == "bf16":
        raise ConfigError(
            "allow_tf32=false and precision=bf16 contradict each other; drop allow_tf32 "
            "(deprecated: precision=fp32 is what it meant)"
        )
    log.warning("allow_tf32=false is deprecated: it is precision=fp32 (the same run); use that")
    return "fp32"


def default_eval_every(num_steps: int, points: int = 50) -> int:
    """An interval giving about ``points`` evaluations per curve (plus step 0)."""
    return max(1, num_steps // max(1, points))


@dataclass(frozen=True)
class TrainSettings:
    """How a run is driven; the first six fields, ``stop_at`` and ``compile`` change the
    recorded result, the others not (``cuda_graph``: to rounding)."""

    num_steps: int
    eval_every: int
    seed: int = 0
    log_every: int = 10
    divergence_factor: float | None = 100.0
    eval_max_batches: int | None = None  # per split; None: the whole split
    checkpoint_every: int | None = 500
    keep_checkpoint: bool = False
    progress: str = "auto"  # "auto" (a bar on a terminal, else lines), "bar", "lines", "off"
    log_interval_s: float = 60.0
    #: Stop after this many steps, keeping the checkpoint: the first part of the run of
    #: ``num_steps`` steps (same schedule), e.g. a step-size probe. None: the whole run.
    stop_at: int | None = None
    #: Compile the model's forward and backward with torch.compile in this mode (None:
    #: eager). Changes the float rounding, so it is part of the run's identity.
    compile: str | None = None
    #: Each training step as one CUDA graph (``runner.graphs``); the same run to rounding.
    cuda_graph: bool = False

    @property
    def end(self) -> int:
        return self.num_steps if self.stop_at is None else self.stop_at

    def __post_init__(self):
        if self.num_steps < 0 or self.eval_every < 1 or self.log_every < 1:
            raise ValueError(f"need num_steps >= 0, eval_every >= 1, log_every >= 1: {self}")
        if self.divergence_factor is not None and not self.divergence_factor > 1:
            raise ValueError(f"divergence_factor must be > 1 or None, got {self.divergence_factor}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1 or None, got {self.checkpoint_every}")
        if self.eval_max_batches is not None and self.eval_max_batches < 1:
            raise ValueError(f"eval_max_batches must be >= 1 or None, got {self.eval_max_batches}")
        if self.stop_at is not None and not 0 < self.stop_at <= self.num_steps:
            raise ValueError(f"stop_at must be in 1..num_steps or None, got {self.stop_at}")
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise ValueError(
                f"compile must be false, true or one of {', '.join(COMPILE_MODES)}, "
                f"got {self.compile!r}"
            )
        if self.progress not in ("auto", "bar", "lines", "off"):
            raise ValueError(f"progress must be auto, bar, lines or off, got {self.progress!r}")


@dataclass(frozen=True)
class OptimizerSpec:
    """A registered method and all its keyword arguments (lr included)."""

    name: str
    kwargs: dict[str, Any]

    @property
    def method(self) -> methods.Method:
        return methods.get(self.name)

    @property
    def lr(self) -> float:
        return float(self.kwargs["lr"])

    def build(self, params) -> torch.optim.Optimizer:
        return self.method.cls(params, **self.kwargs)


@dataclass(frozen=True)
class BudgetRule:
    """How the schedule and the evaluation interval follow the step budget.

    With ``scale_schedule`` (``schedule=paper``) the milestones, given for the problem's
    own budget ``reference_steps``, scale with a shorter or longer budget (P4 at 1,500
    steps: x0.1 at step 938); an explicit ``eval_every`` wins over ``eval_points``.
    """

    reference_steps: int
    reference_milestones: tuple[int, ...]
    scale_schedule: bool
    eval_points: int
    eval_every: int | None = None

    def milestones(self, num_steps: int) -> tuple[int, ...]:
        if not self.scale_schedule or num_steps == self.reference_steps:
            return tuple(self.reference_milestones)
        ratio = num_steps / self.reference_steps
        return tuple(round(m * ratio) for m in self.reference_milestones)

    def interval(self, num_steps: int) -> int:
        return self.eval_every or default_eval_every(num_steps, self.eval_points)


@dataclass(frozen=True)
class LoggerSpec:
    """``logger=none`` or ``logger=wandb`` and its settings."""

    name: str = "none"
    project: str = "dissecting-adam"
    entity: str | None = None
    mode: str = "offline"
    job_type: str = "train"
    tags: tuple[str, ...] = ()
    dir: str | None = None


@dataclass(frozen=True)
class RunSpec:
    """Everything one run is, resolved (the values in effect). ``identity()`` is what defines
    the result; paths, device, speed settings, ``force``, ``role`` and the logger are not."""

    problem: str
    problem_config: ProblemConfig  # the real batch size, budget and schedule
    optimizer: OptimizerSpec
    train: TrainSettings
    budget: BudgetRule
    profile: str = "paper"
    data_variant: str = "real"  # or "synthetic": generated stand-ins (tests, smoke checks)
    results_root: str = "results"
    device: str = "auto"  # resolved when the run starts: "auto" is CUDA if available
    #: fp32, tf32 (TF32 matmuls and convolutions on CUDA; fp32 on the CPU) or bf16
    #: (autocast forward and loss; parameters, gradients and optimizer state float32).
    precision: str = "tf32"
    #: cuDNN picks the fastest algorithms by timing them (CUDA; off under deterministic).
    cudnn_benchmark: bool = True
    deterministic: bool = False  # deterministic algorithms only (bit-identical resume)
    flush_denormal: bool = False  # subnormal floats become zero on the CPU (speed; identity)
    force: bool = False
    logger: LoggerSpec = field(default_factory=LoggerSpec)
    role: str = "single"  # in the protocol: probe, search, replicate; single: on its own
    #: Deprecated, read by ``__init__`` only: ``allow_tf32=False`` is ``precision="fp32"``
    #: (old config.yaml records and callers keep working; ``precision_setting``).
    allow_tf32: InitVar[bool | None] = None

    @property
    def seed(self) -> int:
        return self.train.seed

    @property
    def num_steps(self) -> int:
        return self.train.num_steps

    # --- deriving -----------------------------------------------------------------------
    def derive(self, *, lr: float | None = None, seed: int | None = None,
               num_steps: int | None = None, stop_at: int | None = None,
               **changes) -> RunSpec:  # fmt: skip
        """This run with another step size, seed or step budget (schedule and evaluation
        interval follow the budget as ``budget`` says), stopped early at ``stop_at`` (its
        first part), or with other top-level fields."""
        spec = self
        if lr is not None:
            optimizer = dataclasses.replace(
                spec.optimizer, kwargs={**spec.optimizer.kwargs, "lr": float(lr)}
            )
            spec = dataclasses.replace(spec, optimizer=optimizer)
        if seed is not None:
            spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, seed=int(seed)))
        if num_steps is not None:
            n = int(num_steps)
            problem_config = dataclasses.replace(
                spec.problem_config, num_steps=n, lr_milestones=spec.budget.milestones(n)
            )
            train = dataclasses.replace(spec.train, num_steps=n, eval_every=spec.budget.interval(n))
            spec = dataclasses.replace(spec, problem_config=problem_config, train=train)
        if stop_at is not None:
            spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, stop_at=stop_at))
        if "precision" in changes:  # the precision alone, not the deprecated alias read back
            changes.setdefault("allow_tf32", None)
        return dataclasses.replace(spec, **changes) if changes else spec

    def __post_init__(self, allow_tf32: bool | None):
        # deterministic=true turns cuDNN autotuning off (backend.configure): it may pick
        # non-deterministic algorithms; both are recorded, neither is in the identity.
        object.__setattr__(self, "precision", precision_setting(self.precision, allow_tf32))

    # --- identity and record ------------------------------------------------------------
    def identity(self) -> dict:
        """Everything that can change the run's recorded result (and nothing else)."""
        config = {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(self.problem_config).items()
            if k not in NOT_IDENTITY
        }
        t = self.train
        # Version 2 (records.IDENTITY_VERSION): every setting at its value, no defaults
        # left out; stores of version 1 are moved by runner.migrate, once.
        return {
            "identity_version": IDENTITY_VERSION,
            "profile": self.profile,
            "problem": self.problem,
            "problem_config": config,
            "data_variant": self.data_variant,
            "optimizer": self.optimizer.name,
            "optimizer_kwargs": dict(self.optimizer.kwargs),
            "optimizer_target": self.optimizer.method.target,
            "seed": t.seed,
            "train": {
                "num_steps": t.num_steps,
                "eval_every": t.eval_every,
                "eval_max_batches": t.eval_max_batches,
                "log_every": t.log_every,
                "divergence_factor": t.divergence_factor,
                "stop_at": t.stop_at,  # a partial run (a probe) records where it stops
                "compile": t.compile,
            },
            # bf16 is not the paper's numerics; on a CPU, flushed subnormals make sign
            # methods take no step where they took one: both change the result.
            "precision": self.precision,
            "flush_denormal": bool(self.flush_denormal),
        }

    def run_dir(self):
        from .store import RunDir

        return RunDir.for_identity(Path(self.results_root), self.identity())

    def to_dict(self) -> dict:
        """Plain data (YAML/JSON-ready): the run's ``config.yaml``."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> RunSpec:
        """The inverse of ``to_dict`` (a run's ``config.yaml`` read back)."""
        config_cls = PROBLEMS[d["problem"]].Config
        return cls(
            **{
                **d,
                "problem_config": config_cls(**d["problem_config"]),
                "optimizer": OptimizerSpec(**d["optimizer"]),
                "train": TrainSettings(**d["train"]),
                "budget": BudgetRule(
                    **{
                        **d["budget"],
                        "reference_milestones": tuple(d["budget"]["reference_milestones"]),
                    }
                ),  # fmt: skip
                "logger": LoggerSpec(**{**d["logger"], "tags": tuple(d["logger"]["tags"])}),
            }
        )


# Deprecated read access (old callers of ``spec.allow_tf32``): TF32 allowed unless the
# run is fp32. Set after the class, so that the InitVar's default stays None;
# ``dataclasses.replace`` passes this value back to ``__init__`` (False keeps an fp32 run
# fp32), ``derive(precision=...)`` passes None.
RunSpec.allow_tf32 = property(lambda self: self.precision != "fp32")
