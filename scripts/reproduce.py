"""Reproduce Fig. 5: data, step-size search, replicates, the figure, tables and claims.

    python scripts/reproduce.py                                   # the paper profile
    python scripts/reproduce.py profile=smoke 'problems=[fmnist_2c2d,tolstoi_char_rnn]'
    python scripts/reproduce.py launcher=joblib                   # fan runs out locally
    python scripts/reproduce.py launcher=packed                   # N runs at once per GPU
    python scripts/reproduce.py parallel_seeds=1                  # no groups, even on CUDA
    python scripts/reproduce.py dry_run=true                      # the plan, nothing run

Batching (``parallel_seeds`` and ``launcher``, both ``auto`` by default): on CUDA, groups of
up to 10 runs that differ only in seed and step size (a pair's replicates, a search round's
step sizes) train as one batched computation, and groups of different pairs share the
device (``launcher=packed``); on a CPU, single runs in this process. The plan line says
which is in effect and why.

Settings: conf/reproduce.yaml and conf/search/. Every setting is checked before anything
is planned, loaded or written (``build``; for dry_run=true too): a bad one, a device this
machine lacks, or an override no (problem, optimizer) pair accepts exits with status 1 and
one line naming the setting, its value and the fix; so do runs that failed (one line naming
them, after the others of their batch finished). Resumable: rerun after an interruption
and finished runs are skipped. Outputs go to results/<profile>/fig5/. This script turns the
config into built objects (``build``): one base RunSpec per (problem, optimizer), composed
once each, the search settings and a launcher; ``dissecting_adam.protocol`` does the rest.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from dissecting_adam import methods
from dissecting_adam.problems import PROBLEMS, DataError
from dissecting_adam.protocol import claims, driver
from dissecting_adam.protocol.batching import Batching, jobs_text, launcher_of, members_of
from dissecting_adam.protocol.estimate import estimate
from dissecting_adam.protocol.launch import HydraMultirun, InProcess, Packed, RunsFailed
from dissecting_adam.protocol.search import SearchSettings
from dissecting_adam.protocol.workers import one_line
from dissecting_adam.runner.data import problem_for
from dissecting_adam.runner.loop import Interrupted
from dissecting_adam.runner.plan import ConfigError, plan_pairs
from dissecting_adam.runner.session import check_device
from dissecting_adam.runner.store import ResultsError

log = logging.getLogger("reproduce")
TRAIN = Path(__file__).resolve().with_name("train.py")


def search_settings(node: DictConfig) -> SearchSettings:
    """``conf/search/<profile>.yaml`` as ``SearchSettings``; a ConfigError (one line, naming
    the setting, its value and the fix) for any value that is missing or out of range."""
    raw = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    g = raw.get("grid")
    if not isinstance(g, dict):
        raise ConfigError(f"search.grid={g} is not a mapping; see conf/search/paper.yaml")
    hi = g.get("hi") or {}
    try:
        return SearchSettings(
            name=str(raw.get("name")),
            mantissas=tuple(_real(m) for m in g.get("mantissas"))
            if isinstance(g.get("mantissas"), list)
            else g.get("mantissas"),
            lo=_real(g.get("lo")),
            grid_hi={k: _real(v) for k, v in hi.items()} if isinstance(hi, dict) else hi,
            up_points=_whole(g.get("up_points")),
            probe_fraction=_real(raw.get("probe_fraction")),
            progress_ratio=_real(raw.get("progress_ratio")),
            points=_whole(raw.get("points")),
            max_extensions=_whole(raw.get("max_extensions")),
            metric=raw.get("metric"),
            mode=raw.get("mode"),
            tolerance=_real(raw.get("tolerance")),
            search_seed=_whole(raw.get("search_seed")),
            replicate_seeds=tuple(_whole(x) for x in raw.get("replicate_seeds"))
            if isinstance(raw.get("replicate_seeds"), list)
            else raw.get("replicate_seeds"),
        )
    except ValueError as err:
        raise ConfigError(str(err)) from err


def _real(value):
    """A number given as an int or a string, as a float; anything else as it is (the
    settings' check names it)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _whole(value):
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return value


def _names(cfg: DictConfig, key: str, known, example: str) -> list[str]:
    """``cfg[key]``, a non-empty list of known names."""
    value = cfg.get(key)
    if not OmegaConf.is_list(value):
        raise ConfigError(f"{key}={value} is not a list; write it as a list, {example}")
    names = [str(v) for v in value]
    if not names:
        raise ConfigError(f"{key}=[] names none; name at least one, {example}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(
            f"{key}=[{','.join(names)}] names unknown {key[:-1]}(s) {unknown}; choose from "
            f"{list(known)}"
        )
    return names


#: Launchers that run on this machine besides Hydra's: in this process, or worker processes
#: (auto: packed on CUDA, basic on a CPU).
OWN_LAUNCHERS = ("auto", "basic", "packed")


def hydra_launchers() -> list[str] | None:
    """The Hydra launchers available (conf/hydra/launcher and installed plugins), or None
    when Hydra is not initialised (then they are not checked here)."""
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():
        return None
    return GlobalHydra.instance().config_loader().get_group_options("hydra/launcher")


def check_settings(cfg: DictConfig) -> None:
    """The reproduction's own settings (not the search's, not the runs'): a ConfigError,
    one line, before anything is planned, loaded or written."""
    launcher = cfg.launcher
    known = hydra_launchers()
    if not isinstance(launcher, str) or (
        known is not None and launcher not in (*OWN_LAUNCHERS, *known)
    ):
        choices = ", ".join([*OWN_LAUNCHERS, *(n for n in known or () if n != "basic")])
        raise ConfigError(f"launcher={launcher} is not a launcher; choose one of {choices}")
    members_of(_whole(cfg.get("parallel_seeds")), ["cpu"])  # auto or an integer >= 1
    value = _whole(cfg.get("estimate_steps"))
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"estimate_steps={value} must be an integer >= 1; e.g. estimate_steps=3")
    if cfg.estimate not in (None, True, False):
        raise ConfigError(
            f"estimate={cfg.estimate} must be true, false or null; null: estimate, except "
            "with dry_run"
        )
    if cfg.dry_run not in (True, False):
        raise ConfigError(f"dry_run={cfg.dry_run} must be true or false; e.g. dry_run=true")
    if remote(cfg):
        return  # the runs' device is on the cluster's nodes, not here
    check_device(str(cfg.device))


def remote(cfg: DictConfig) -> bool:
    """Whether the runs go to other machines (a SLURM cluster), not this one."""
    return "slurm" in str(cfg.launcher)


def build(cfg: DictConfig) -> driver.Reproduction:
    """The reproduction that ``cfg`` (conf/reproduce.yaml) describes; runs nothing. Bad
    settings raise a ConfigError here, before any run folder exists (also for dry_run)."""
    problems = _names(cfg, "problems", PROBLEMS, "e.g. 'problems=[fmnist_2c2d]'")
    optimizers = _names(cfg, "optimizers", methods.METHODS, "e.g. 'optimizers=[msgd,adam]'")
    check_settings(cfg)
    search = search_settings(cfg.search)
    batching = resolve_batching(cfg, problems)
    k = batching.members
    if batching.launcher == "basic":
        launch = InProcess(k)
    elif batching.launcher == "packed":
        launch = packed(cfg, k)
    else:
        launch = HydraMultirun(
            batching.launcher,
            (sys.executable, str(TRAIN)),
            tuple(str(o) for o in cfg.get("launcher_overrides") or ()),
            parallel_seeds=k,
        )
    pairs = [(p, o) for p in problems for o in optimizers]
    for optimizer in optimizers:
        try:
            search.check(methods.get(optimizer))
        except ValueError as err:
            raise ConfigError(str(err)) from None
    overrides = [
        f"profile={cfg.profile.name}",
        f"results_root={cfg.results_root}",
        f"device={cfg.device}",
        f"data.root={cfg.data.root}",
        "train.progress=lines",
        *([f"data.mirror={cfg.data.mirror}"] if cfg.data.mirror else []),
        *logger_overrides(cfg.logger),
        *cfg.overrides,
    ]
    try:
        planned = plan_pairs(pairs, overrides)
    except HydraException as err:  # an override Hydra cannot apply to conf/train.yaml
        raise ConfigError(
            f"overrides={list(cfg.overrides)} cannot be applied: {one_line(err)}; fix or "
            "remove it (they are overrides of conf/train.yaml)"
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
        checks = claims.claims_from_dict(OmegaConf.to_container(cfg.claims, resolve=True))
    except ValueError as err:
        raise ConfigError(f"claims '{cfg.claims.name}': {err}") from err
    return driver.Reproduction(
        base, search, launch, Path(cfg.out_dir), str(cfg.profile.name), claims=checks,
        batching=batching,
    )  # fmt: skip


def resolve_batching(cfg: DictConfig, problems: list[str]) -> Batching:
    """``launcher`` and ``parallel_seeds`` (``auto``: by the device the runs use) as the
    batching in effect, with the reasons the plan prints."""
    launcher, launcher_why = launcher_of(str(cfg.launcher), [str(cfg.device)])
    devices = [str(cfg.device)]
    if launcher == "packed":  # the runs go to the packed devices
        value = cfg.get("devices", "auto")
        devices = [str(value)] if isinstance(value, str) else [str(d) for d in value]
    members, members_why = members_of(_whole(cfg.get("parallel_seeds")), devices, remote(cfg))
    jobs = ""
    if launcher == "packed":
        value = cfg.get("jobs_per_device", 1)
        value = OmegaConf.to_container(value) if isinstance(value, DictConfig) else value
        jobs = jobs_text(value, problems)
    return Batching(members, members_why, launcher, launcher_why, jobs)


def packed(cfg: DictConfig, members: int = 1) -> Packed:
    """``launcher=packed``: ``jobs_per_device`` (a number, or one per problem) on ``devices``."""
    jobs = cfg.get("jobs_per_device", 1)
    jobs = OmegaConf.to_container(jobs) if isinstance(jobs, DictConfig) else jobs
    values = jobs.values() if isinstance(jobs, dict) else [jobs]
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


def logger_overrides(node: DictConfig) -> list[str]:
    """The reproduction's logger settings, for every run it starts."""
    out = [f"logger={node.name}"]
    for key, value in node.items():
        if key != "name":
            value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            out.append(f"logger.{key}={_override_value(value)}")
    return out


def _override_value(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, list):
        return "[" + ",".join(_override_value(x) for x in v) + "]"
    return f"'{v}'" if isinstance(v, str) else str(v)


def header(r: driver.Reproduction) -> str:
    s = r.search
    return (
        f"Reproducing Fig. 5 ({r.profile} profile, search '{s.name}'): {len(r.pairs)} "
        f"(problem, optimizer) pairs; per pair a probe, {s.points} search runs (+ up to "
        f"{s.max_extensions} more) and {len(s.replicate_seeds)} seeds."
    )


def run(cfg: DictConfig) -> dict[str, Path] | None:
    """The whole command: the plan (and exit, with ``dry_run``), data, runs, outputs."""
    t0 = time.perf_counter()
    r = build(cfg)
    print(header(r), flush=True)
    print(driver.plan_line(r), flush=True)
    if cfg.dry_run:
        print(driver.dry_run(r))
        print(f"(planned in {time.perf_counter() - t0:.2f} s)")
        if cfg.estimate:
            print(estimate_here(cfg, r))
        return None
    firsts = {spec.problem: spec for spec in r.base.values()}.values()
    for spec in firsts:  # data first: fail before any training if it is missing
        if spec.data_variant == "real":
            with problem_for(spec, "cpu") as problem:
                problem.prepare()
    if cfg.estimate is not False:
        print(estimate_here(cfg, r), flush=True)
    return driver.reproduce(r)


def estimate_here(cfg: DictConfig, r: driver.Reproduction) -> str:
    """The compute estimate, timed on this machine's device; with a cluster launcher whose
    device this machine lacks, a line that says so instead."""
    if remote(cfg):
        try:
            check_device(str(cfg.device))
        except ConfigError as err:
            return f"  (no estimate: {err})"
    return estimate(r, int(cfg.estimate_steps))


def _terminate(signum, frame):  # outside a training session (which checkpoints first)
    raise Interrupted(f"{signal.Signals(signum).name} received")


@hydra.main(version_base="1.3", config_path="../conf", config_name="reproduce")
def main(cfg: DictConfig) -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        run(cfg)
    except (ConfigError, ResultsError, DataError, RunsFailed) as err:
        log.error("%s", err)  # one line: it names the setting, the file or the runs
        sys.exit(1)
    except Interrupted:  # SIGTERM: the running run checkpointed and is recorded interrupted
        log.warning("interrupted; rerun the same command to continue")
        sys.exit(143)
    except KeyboardInterrupt:
        log.warning("interrupted; rerun the same command to continue")
        sys.exit(130)


if __name__ == "__main__":
    main()
