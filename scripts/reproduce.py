"""Reproduce Fig. 5: data, step-size search, replicates, the figure, tables and claims.

    python scripts/reproduce.py                                   # the paper profile
    python scripts/reproduce.py profile=smoke 'problems=[fmnist_2c2d,tolstoi_char_rnn]'
    python scripts/reproduce.py launcher=joblib                   # fan runs out locally
    python scripts/reproduce.py launcher=packed                   # N runs at once per GPU
    python scripts/reproduce.py dry_run=true                      # the plan, nothing run

Settings: conf/reproduce.yaml and conf/search/. Resumable: rerun after an interruption and
finished runs are skipped. Outputs go to results/<profile>/fig5/. This script turns the
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
from omegaconf import DictConfig, OmegaConf

from dissecting_adam import methods
from dissecting_adam.problems import PROBLEMS, DataError
from dissecting_adam.protocol import claims, driver
from dissecting_adam.protocol.estimate import estimate
from dissecting_adam.protocol.launch import HydraMultirun, InProcess, Packed
from dissecting_adam.protocol.search import SearchSettings
from dissecting_adam.runner.data import problem_for
from dissecting_adam.runner.loop import Interrupted
from dissecting_adam.runner.plan import ConfigError, plan_pairs
from dissecting_adam.runner.store import ResultsError

log = logging.getLogger("reproduce")
TRAIN = Path(__file__).resolve().with_name("train.py")


def search_settings(node: DictConfig) -> SearchSettings:
    g = node.grid
    try:
        return SearchSettings(
            name=str(node.name),
            mantissas=tuple(float(m) for m in g.mantissas),
            lo=float(g.lo),
            grid_hi={k: float(v) for k, v in (g.hi or {}).items()},
            up_points=int(g.up_points),
            probe_fraction=float(node.probe_fraction),
            progress_ratio=None if node.progress_ratio is None else float(node.progress_ratio),
            points=int(node.points),
            max_extensions=int(node.max_extensions),
            metric=str(node.metric),
            mode=str(node.mode),
            tolerance=float(node.tolerance),
            search_seed=int(node.search_seed),
            replicate_seeds=tuple(int(s) for s in node.replicate_seeds),
        )
    except ValueError as err:
        raise ConfigError(str(err)) from err


def build(cfg: DictConfig) -> driver.Reproduction:
    """The reproduction that ``cfg`` (conf/reproduce.yaml) describes; runs nothing."""
    unknown = [p for p in cfg.problems if p not in PROBLEMS]
    if unknown:
        raise ConfigError(f"unknown problem(s) {unknown}; choose from {list(PROBLEMS)}")
    search = search_settings(cfg.search)
    pairs = [(p, o) for p in cfg.problems for o in cfg.optimizers]
    for _, optimizer in pairs:
        try:
            method = methods.get(optimizer)
        except KeyError as err:
            raise ConfigError(f"optimizer={optimizer}: {err.args[0]}") from None
        if search.grid_top(method) is None:
            raise ConfigError(
                f"search '{search.name}' has no grid start for optimizer={optimizer}: add "
                f"'{search.name}' to its registry entry's grid_top (dissecting_adam.methods) "
                f"or set search.grid.hi.{optimizer}=<lr> in conf/search/{search.name}.yaml"
            )
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
    base = {}
    for pair, spec in plan_pairs(pairs, overrides).items():
        if isinstance(spec, ConfigError):
            log.warning("skipping %s/%s: %s", *pair, spec)
        else:
            base[pair] = spec
    if cfg.launcher == "basic":
        launch = InProcess(int(cfg.parallel_seeds))
    elif cfg.launcher == "packed":
        launch = packed(cfg)
    else:
        launch = HydraMultirun(
            str(cfg.launcher),
            (sys.executable, str(TRAIN)),
            tuple(str(o) for o in cfg.get("launcher_overrides") or ()),
        )
    try:
        checks = claims.claims_from_dict(OmegaConf.to_container(cfg.claims, resolve=True))
    except ValueError as err:
        raise ConfigError(f"claims '{cfg.claims.name}': {err}") from err
    return driver.Reproduction(
        base, search, launch, Path(cfg.out_dir), str(cfg.profile.name), claims=checks
    )


def packed(cfg: DictConfig) -> Packed:
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
    return Packed(jobs, tuple(str(d) for d in devices), int(cfg.parallel_seeds))


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
            print(estimate(r, int(cfg.estimate_steps)))
        return None
    firsts = {spec.problem: spec for spec in r.base.values()}.values()
    for spec in firsts:  # data first: fail before any training if it is missing
        if spec.data_variant == "real":
            with problem_for(spec, "cpu") as problem:
                problem.prepare()
    if cfg.estimate is not False:
        print(estimate(r, int(cfg.estimate_steps)), flush=True)
    return driver.reproduce(r)


def _terminate(signum, frame):  # outside a training session (which checkpoints first)
    raise Interrupted(f"{signal.Signals(signum).name} received")


@hydra.main(version_base="1.3", config_path="../conf", config_name="reproduce")
def main(cfg: DictConfig) -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        run(cfg)
    except (ConfigError, ResultsError, DataError) as err:
        log.error("%s", err)
        sys.exit(1)
    except Interrupted:  # SIGTERM: the running run checkpointed and is recorded interrupted
        log.warning("interrupted; rerun the same command to continue")
        sys.exit(143)
    except KeyboardInterrupt:
        log.warning("interrupted; rerun the same command to continue")
        sys.exit(130)


if __name__ == "__main__":
    main()
