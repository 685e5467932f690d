"""Every config of conf/ composes, builds a run plan, and every problem x optimizer trains.

The smoke runs use generated data (``data.variant=synthetic``) and tiny batches, so each
takes well under a second after the data is written.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException

from dissecting_adam import methods
from dissecting_adam.runner.plan import ConfigError, plan
from dissecting_adam.runner.session import execute

CONF = str(Path(__file__).resolve().parents[1] / "conf")
PROBLEMS = ["fmnist_2c2d", "cifar10_3c3d", "cifar100_wrn404", "tolstoi_char_rnn"]
OPTIMIZERS = methods.names()  # the registry: each needs its conf/optimizer/<name>.yaml
#: Pairs refused at plan time: per-example gradients are not defined under BatchNorm.
UNSUPPORTED = {("cifar100_wrn404", "msvag_mb"), ("cifar100_wrn404", "svag_mb")}
PROFILES = ["paper", "smoke", "preview"]
SCHEDULES = {
    "paper": [],
    "constant": [],
    "piecewise": ["schedule.milestones=[3,6]", "schedule.gamma=0.5"],
}
LOGGERS = ["none", "wandb"]
LAUNCHERS = {
    "basic": "BasicLauncher",
    "joblib": "JoblibLauncher",
    "local_parallel": "JoblibLauncher",
    "submitit_slurm": "SlurmLauncher",
    "slurm": "SlurmLauncher",
}
#: Tiny settings per problem for the smoke runs on generated data.
TINY = {
    "fmnist_2c2d": ["problem.batch_size=8", "problem.eval_batch_size=16"],
    "cifar10_3c3d": ["problem.batch_size=8", "problem.eval_batch_size=16"],
    "cifar100_wrn404": ["problem.batch_size=2", "problem.eval_batch_size=4"],
    "tolstoi_char_rnn": ["problem.batch_size=4", "+problem.seq_length=10"],
}


def make_cfg(overrides, hydra_cfg=False):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=hydra_cfg)


def _check(cfg, prob, opt, prof):
    if (prob, opt) in UNSUPPORTED:
        with pytest.raises(ConfigError, match="per-example gradients.*optimizer=msvag"):
            plan(cfg)
        return None
    p = plan(cfg)  # builds the problem (no data) and tries the optimizer on a dummy tensor
    assert (p.problem, p.optimizer.name) == (prob, opt)
    assert p.run_dir().path.parts[-5:-2] == (prof, prob, opt)
    return p


def test_every_problem_optimizer_profile_composes_and_plans():
    paths = set()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        for prob, opt, prof in itertools.product(PROBLEMS, OPTIMIZERS, PROFILES):
            cfg = compose(
                "train", overrides=[f"problem={prob}", f"optimizer={opt}", f"profile={prof}"]
            )
            p = _check(cfg, prob, opt, prof)
            if p is not None:
                paths.add(p.run_dir().path)
    n_plannable = len(PROBLEMS) * len(OPTIMIZERS) - len(UNSUPPORTED)
    assert len(paths) == n_plannable * len(PROFILES)


def test_every_schedule_and_logger_composes_with_every_problem():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        for prob, sched, logger in itertools.product(PROBLEMS, SCHEDULES, LOGGERS):
            overrides = [f"problem={prob}", f"schedule={sched}", *SCHEDULES[sched]]
            cfg = compose("train", overrides=[*overrides, f"logger={logger}"])
            p = _check(cfg, prob, "msvag", "paper")
            if sched == "piecewise":
                assert p.problem_config.lr_milestones == (3, 6)


@pytest.mark.slow
def test_the_full_product_of_groups_composes_and_plans():
    combos = itertools.product(PROBLEMS, OPTIMIZERS, PROFILES, SCHEDULES, LOGGERS)
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        for prob, opt, prof, sched, logger in combos:
            overrides = [f"problem={prob}", f"optimizer={opt}", f"profile={prof}"]
            overrides += [f"schedule={sched}", *SCHEDULES[sched], f"logger={logger}"]
            _check(compose("train", overrides=overrides), prob, opt, prof)


def test_profiles_set_the_budget_and_paper_keeps_the_problems():
    assert plan(make_cfg(["problem=cifar100_wrn404"])).problem_config.num_steps == 80_000
    smoke = plan(make_cfg(["problem=fmnist_2c2d", "profile=smoke"]))
    assert smoke.problem_config.num_steps == 10 and smoke.train.eval_every == 5
    explicit = plan(make_cfg(["profile=smoke", "train.num_steps=7"]))
    assert explicit.problem_config.num_steps == explicit.train.num_steps == 7


def test_paper_schedule_scales_with_a_shorter_budget():
    full = plan(make_cfg(["problem=tolstoi_char_rnn"])).problem_config
    assert full.lr_milestones == (125_000,)
    short = plan(make_cfg(["problem=tolstoi_char_rnn", "train.num_steps=2000"]))
    assert short.problem_config.lr_milestones == (1250,)
    assert short.derive(num_steps=200_000).problem_config == full  # the budget rule
    const = plan(make_cfg(["problem=cifar100_wrn404", "schedule=constant"])).problem_config
    assert const.lr_milestones == () and const.lr_gamma == 1.0


def test_optimizer_defaults_follow_the_paper():
    for name, beta in [("msgd", 0.9), ("mssd", 0.9), ("msvag", 0.9), ("sgd", 0.0), ("ssd", 0.0)]:
        assert plan(make_cfg([f"optimizer={name}"])).optimizer.kwargs["beta"] == beta
    for name in ("mssd_va", "mssd_erf"):  # paper §C variants: M-SSD's lr and beta
        kwargs = plan(make_cfg([f"optimizer={name}"])).optimizer.kwargs
        assert kwargs == plan(make_cfg(["optimizer=mssd"])).optimizer.kwargs
    adam = plan(make_cfg(["optimizer=adam"]))
    assert adam.optimizer.method.cls is torch.optim.Adam


@pytest.mark.parametrize("launcher, cls", LAUNCHERS.items())
def test_launchers_compose(launcher, cls):
    cfg = make_cfg([f"hydra/launcher={launcher}"], hydra_cfg=True)
    assert cfg.hydra.launcher._target_.endswith(cls)
    if launcher == "slurm":
        assert cfg.hydra.launcher.gpus_per_task == 1 and cfg.hydra.launcher.timeout_min > 0


@pytest.mark.parametrize("group, bad", [("problem", "mnist_mlp"), ("optimizer", "lamb")])
def test_unknown_choice_lists_the_options(group, bad):
    with pytest.raises(MissingConfigException) as err:
        make_cfg([f"{group}={bad}"])
    options = PROBLEMS if group == "problem" else OPTIMIZERS
    for name in options:
        assert name in str(err.value)


@pytest.mark.parametrize(
    "problem, opt",
    [pair for pair in itertools.product(PROBLEMS, OPTIMIZERS) if pair not in UNSUPPORTED],
)
def test_smoke_run_of_every_problem_and_optimizer(problem, opt, tmp_path, one_thread):
    overrides = [f"problem={problem}", f"optimizer={opt}", "profile=smoke"]
    overrides += ["data.variant=synthetic", f"results_root={tmp_path}", "train.num_steps=2"]
    overrides += ["train.eval_every=2", "train.eval_max_batches=1", "train.progress=off"]
    overrides += ["train.log_every=1", *TINY[problem]]
    summary = execute(plan(make_cfg(overrides)))
    assert summary["status"] == "completed", summary
    assert summary["steps_done"] == 2
    final = summary["final"]
    assert 0.0 <= final["test_accuracy"] <= 1.0 and final["train_eval_loss"] > 0
