"""What the GPU check measures, and how much of it: the full sizes and the tiny ones."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Sizes:
    """How much each section measures."""

    wrn: tuple[int, int]  # depth, widening factor of the optimizer step's parameter shapes
    optim_rounds: int
    reference_rounds: int
    steps: int  # timed training steps per problem and mode
    warmup: int
    copy_mib: int = 1024  # the buffer whose copy sets the bandwidth the optimizer rows face
    optim_compile_share: float = 0.5  # of the optimizer section, kept for torch.compile
    optim_compile_margin_s: float = 3.0
    optim_compile_steps: int = 20  # timed after the compiling first step
    gemm_n: int = 8192  # the matmul whose TFLOP/s is the peak the step table faces
    batch: dict = field(default_factory=dict)  # problem -> batch size (tiny); else the paper's
    stand_in: str = "shapes"  # generated data: "shapes" (the real ones) or "small"
    # The quick compiles first: WRN-40-4 is the slowest to compile.
    compile_problems: tuple[str, ...] = (
        "fmnist_2c2d",
        "cifar10_3c3d",
        "tolstoi_char_rnn",
        "cifar100_wrn404",
    )
    runner_problems: tuple[str, ...] = ("fmnist_2c2d", "tolstoi_char_rnn")
    runner_steps: int = 100
    runner_repeats: int = 3
    jobs: tuple[int, ...] = (1, 2, 4, 8)  # jobs_per_device, single runs
    runs_per_job: int = 2
    pack_steps: dict = field(default_factory=lambda: {"fmnist_2c2d": 300, "cifar10_3c3d": 200})
    # Groups: K members against a single run, on every problem; the driver's K first.
    ks: tuple[int, ...] = (2, 4, 10)
    seed_steps: int = 30
    # The driver's batching for the packing measurement "as the driver runs it": None takes
    # the reproduction's (``parallel_seeds`` and ``jobs_per_device`` as resolved on the device).
    group_members: int | None = None
    group_jobs: int | None = None
    profile: str = "paper"  # of the P1 run and the reproduction
    reproduce_s: float | None = None  # section 6's share of the reproduction (None: the rest)
    reproduce_overrides: tuple[str, ...] = ()  # of every run of the P1 reproduction
    weights: dict = field(default_factory=dict)  # section -> its weight, instead of check.PLAN's
    # section -> its least share in seconds, above check.PLAN's: a tiny self-check checks
    # that runs complete, so a loaded machine must not cut its short runs at a deadline.
    floors: dict = field(default_factory=dict)


FULL = Sizes(wrn=(40, 4), optim_rounds=40, reference_rounds=3, steps=30, warmup=5)

TINY = Sizes(
    wrn=(16, 1),
    optim_rounds=3,
    reference_rounds=1,
    copy_mib=16,
    optim_compile_steps=2,
    gemm_n=256,
    steps=2,
    warmup=1,
    batch={"fmnist_2c2d": 8, "cifar10_3c3d": 8, "cifar100_wrn404": 2, "tolstoi_char_rnn": 4},
    stand_in="small",
    compile_problems=("fmnist_2c2d",),
    runner_problems=("fmnist_2c2d",),
    runner_steps=5,
    runner_repeats=2,
    jobs=(1, 2),
    runs_per_job=1,
    pack_steps={"fmnist_2c2d": 3, "cifar10_3c3d": 3},
    ks=(2,),
    seed_steps=2,
    group_members=2,  # groups even on the CPU, where the driver would not form them
    group_jobs=2,
    profile="smoke",
    reproduce_s=10.0,
    # Tiny runs leave the last section most of its share: section 6 gets enough to start
    # the reproduction that the last section resumes.
    # The optimizer's compile never fits a tiny share on a CPU: little time for its cap.
    weights={
        "optimizer_step": 0.08,
        "problem_step": 0.22,
        "runs_per_hour": 0.3,
        "p1_run": 0.15,
        "p1_protocol": 0.3,
    },
    reproduce_overrides=("problem.batch_size=8", "problem.eval_batch_size=16", "train.num_steps=4"),
    floors={"p1_run": 60.0, "p1_protocol": 150.0},
)


@dataclass(frozen=True)
class CheckConfig:
    """One check: the device, the sizes, where things are and where the report goes.

    ``root`` is the checkout (``tests/``, ``conf/``, ``scripts/``): the calling script
    gives it, nothing is located relative to the installed package. ``reproduction``
    builds the paper protocol's ``driver.Reproduction`` and ``planner(pairs, overrides)``
    composes RunSpecs (``runner.plan.plan_pairs``); the script gives both, since composing
    a config needs Hydra, which stays in scripts and ``runner.plan``.
    """

    device: str
    tiny: bool
    out: Path
    root: Path
    budget_s: float
    data_root: str = "data"
    mirror: str | None = None
    compile_modes: tuple[str, ...] = ("default",)
    cudnn_benchmark: bool = False  # as a run's default
    p1_lr: float = 0.1
    python: str = sys.executable
    reproduction: Callable | None = None
    planner: Callable | None = None

    @property
    def sizes(self) -> Sizes:
        return TINY if self.tiny else FULL

    @property
    def note(self) -> str | None:
        if not self.tiny:
            return None
        return (
            f"Tiny {self.device.upper()} self-check: tiny sizes on generated data, so that "
            "the check cannot rot. These numbers are not measurements."
        )

    def data_overrides(self) -> list[str]:
        """Where runs started by the check find their data."""
        out = [f"data.root={self.data_root}"]
        return out + ([f"data.mirror={self.mirror}"] if self.mirror else [])


def paper_reproduction(conf_dir: Path, device: str, results_root: Path):
    """The paper protocol as ``scripts/reproduce.py`` builds it (for the projection)."""
    from ..protocol.build import build
    from ..runner.plan import composed, hydra_at

    overrides = ["profile=paper", f"device={device}", f"results_root={results_root}"]
    with hydra_at(conf_dir):
        return build(composed("reproduce", overrides))


def planner(conf_dir: Path, pairs, overrides: list[str]) -> dict:
    """RunSpecs of ``pairs`` from ``conf/train.yaml`` with ``overrides``; a pair that cannot
    run raises its error."""
    from ..runner.plan import hydra_at, plan_pairs

    with hydra_at(conf_dir):
        specs = plan_pairs(pairs, overrides)
    for failed in (spec for spec in specs.values() if isinstance(spec, Exception)):
        raise failed
    return specs
