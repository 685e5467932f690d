"""From the composed ``conf/reproduce.yaml`` to a ``driver.Reproduction``; runs nothing.

``build`` checks every setting (``settings``) before anything is planned, loaded or
written, then makes the objects the driver works with: one base RunSpec per (problem,
optimizer), composed once each (``plan.plan_pairs``), the search settings, the batching in
effect and a launcher:

- ``basic``: ``launch.InProcess``; ``packed``: ``launch.Packed`` (``jobs_per_device`` on
  ``devices``);
- a Hydra launcher of joblib or submitit (``joblib``, ``local_parallel``,
  ``submitit_slurm``, ``slurm``, ``submitit_local``): its settings are read from
  ``conf/hydra/launcher`` with ``launcher_overrides`` (``plan.launcher_settings``), and the
  RunSpecs themselves are submitted through joblib's or submitit's Python API
  (``submit.Joblib``, ``submit.Submitit``);
- any other Hydra launcher: ``launch.HydraMultirun``, command lines of
  ``scripts/train.py -m`` (``train_command``, given by the calling script).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from .. import methods
from ..problems import PROBLEMS
from ..runner.plan import ConfigError, OverridesError, launcher_settings, override_value, plan_pairs
from ..runner.session import check_device
from . import claims, driver
from .batching import Batching, jobs_text, launcher_of, members_of
from .launch import HydraMultirun, InProcess, Packed
from .settings import check_settings, names, plain, remote, search_settings, whole
from .submit import Joblib, Submitit

log = logging.getLogger(__name__)


def build(cfg, train_command: tuple[str, ...] = ()) -> driver.Reproduction:
    """The reproduction that ``cfg`` (conf/reproduce.yaml) describes; runs nothing. Bad
    settings raise a ConfigError here, before any run folder exists (also for dry_run).
    ``train_command`` (``[python, scripts/train.py]``) serves Hydra launchers that take
    command lines only."""
    problems = names(cfg, "problems", PROBLEMS, "e.g. 'problems=[fmnist_2c2d]'")
    optimizers = names(cfg, "optimizers", methods.METHODS, "e.g. 'optimizers=[msgd,adam]'")
    check_settings(cfg)
    search = search_settings(cfg.search)
    batching = resolve_batching(cfg, problems)
    launch = launcher(cfg, batching, train_command)
    for optimizer in optimizers:
        try:
            search.check(methods.get(optimizer))
        except ValueError as err:
            raise ConfigError(str(err)) from None
    pairs = [(p, o) for p in problems for o in optimizers]
    try:
        planned = plan_pairs(pairs, run_overrides(cfg))
    except OverridesError as err:  # an override Hydra cannot apply to conf/train.yaml
        raise ConfigError(
            f"overrides={list(cfg.overrides)} cannot be applied: {err}; fix or remove it "
            "(they are overrides of conf/train.yaml)"
        ) from None
    base = {pair: spec for pair, spec in planned.items() if not isinstance(spec, ConfigError)}
    if not base:  # e.g. an override invalid for every pair
        (p, o), err = next(iter(planned.items()))
        more = f" (nor the other {len(planned) - 1} pair(s))" if len(planned) > 1 else ""
        raise ConfigError(
            f"no (problem, optimizer) pair can run: {p}/{o}{more}: {err}; fix that setting "
            "(overrides=[...] apply to every run) and rerun"
        )
    for pair, spec in planned.items():
        if pair not in base:
            log.warning("skipping %s/%s: %s", *pair, spec)
    try:
        checks = claims.claims_from_dict(plain(cfg.claims))
    except ValueError as err:
        raise ConfigError(f"claims '{cfg.claims.name}': {err}") from err
    return driver.Reproduction(
        base, search, launch, Path(cfg.out_dir), str(cfg.profile.name), claims=checks,
        batching=batching,
    )  # fmt: skip


def run_overrides(cfg) -> list[str]:
    """The overrides of ``conf/train.yaml`` every run of the reproduction gets: its own
    settings (values quoted: a path may hold spaces or quotes), then ``overrides`` as typed."""
    mirror = cfg.data.mirror
    return [
        f"profile={cfg.profile.name}",
        f"results_root={override_value(str(cfg.results_root))}",
        f"device={override_value(str(cfg.device))}",
        f"data.root={override_value(str(cfg.data.root))}",
        "train.progress=lines",
        *([f"data.mirror={override_value(str(mirror))}"] if mirror else []),
        *logger_overrides(cfg.logger),
        *(str(o) for o in cfg.overrides),
    ]


def logger_overrides(node) -> list[str]:
    """The reproduction's logger settings, for every run it starts."""
    values = plain(node)
    return [f"logger={values.pop('name')}",
            *(f"logger.{k}={override_value(v)}" for k, v in values.items())]  # fmt: skip


def launcher(cfg, batching: Batching, train_command: tuple[str, ...] = ()):
    """The launcher of ``batching.launcher``; its settings checked (a ConfigError)."""
    k = batching.members
    if batching.launcher == "basic":
        return InProcess(k)
    if batching.launcher == "packed":
        return packed(cfg, k)
    given = [str(o) for o in cfg.get("launcher_overrides") or ()]
    settings = launcher_settings(batching.launcher, given, str(cfg.results_root))
    target = str(settings.pop("_target_", ""))
    if target.endswith("JoblibLauncher"):
        return Joblib(settings, k)
    if target.endswith(("SlurmLauncher", "LocalLauncher")):
        cluster = "slurm" if target.endswith("SlurmLauncher") else "local"
        return Submitit(cluster, str(settings.pop("submitit_folder")), settings, k)
    if not train_command:
        raise ConfigError(
            f"launcher={batching.launcher} starts scripts/train.py, which this caller did not "
            "give; run scripts/reproduce.py, or choose launcher=basic, packed or joblib"
        )
    return HydraMultirun(batching.launcher, tuple(train_command), tuple(given), k)


def resolve_batching(cfg, problems: list[str]) -> Batching:
    """``launcher`` and ``parallel_seeds`` (``auto``: by the device the runs use) as the
    batching in effect, with the reasons the plan prints."""
    launcher_name, launcher_why = launcher_of(str(cfg.launcher), [str(cfg.device)])
    devices = [str(cfg.device)]
    if launcher_name == "packed":  # the runs go to the packed devices
        value = cfg.get("devices", "auto")
        devices = [str(value)] if isinstance(value, str) else [str(d) for d in value]
    members, members_why = members_of(whole(cfg.get("parallel_seeds")), devices, remote(cfg))
    jobs = ""
    if launcher_name == "packed":
        jobs = jobs_text(plain(cfg.get("jobs_per_device", 1)), problems)
    return Batching(members, members_why, launcher_name, launcher_why, jobs)


def packed(cfg, members: int = 1) -> Packed:
    """``launcher=packed``: ``jobs_per_device`` (a number, or one per problem) on ``devices``."""
    jobs = plain(cfg.get("jobs_per_device", 1))
    values = jobs.values() if isinstance(jobs, Mapping) else [jobs]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in values):
        raise ConfigError(
            f"jobs_per_device must be an integer >= 1 or one per problem, e.g. "
            f"'jobs_per_device={{fmnist_2c2d: 8}}', got {jobs}"
        )
    devices = cfg.get("devices", "auto")
    devices = [devices] if isinstance(devices, str) else list(devices)
    if not devices:
        raise ConfigError("devices=[] names no device; use devices=auto or e.g. '[cuda:0]'")
    for device in devices:
        if str(device) != "auto":
            try:
                check_device(str(device))
            except ConfigError as err:
                raise ConfigError(f"devices: {err}") from None
    return Packed(jobs, tuple(str(d) for d in devices), members)
