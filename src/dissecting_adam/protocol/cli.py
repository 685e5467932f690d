"""``scripts/reproduce.py``'s command: the plan (and exit, with ``dry_run``), data, runs,
outputs; errors as one line and an exit status.

``main`` is what the script calls with the composed ``conf/reproduce.yaml``: a bad setting,
a missing data set, an unreadable store or runs that failed end it with status 1 and one
line naming the setting, the file or the runs (after the other runs of their batch
finished); SIGTERM (143) and Ctrl-C (130) stop it with the running runs checkpointed and
recorded interrupted: rerun the same command to continue.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

from ..problems import DataError
from ..runner import migrate
from ..runner.data import problem_for
from ..runner.loop import Interrupted
from ..runner.plan import ConfigError
from ..runner.session import check_device
from ..runner.store import ResultsError
from . import driver
from .build import build
from .estimate import estimate
from .launch import RunsFailed
from .settings import remote

log = logging.getLogger("reproduce")


def header(r: driver.Reproduction) -> str:
    s = r.search
    return (
        f"Reproducing Fig. 5 ({r.profile} profile, search '{s.name}'): {len(r.pairs)} "
        f"(problem, optimizer) pairs; per pair a probe, {s.points} search runs (+ up to "
        f"{s.max_extensions} more) and {len(s.replicate_seeds)} seeds."
    )


def run(cfg, train_command: tuple[str, ...] = ()) -> dict[str, Path] | None:
    """The whole command: the plan (and exit, with ``dry_run``), data, runs, outputs."""
    t0 = time.perf_counter()
    r = build(cfg, train_command)
    migrate.refuse_unmigrated(spec.run_dir().path.parents[1] for spec in r.base.values())
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


def estimate_here(cfg, r: driver.Reproduction) -> str:
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


def main(cfg, train_command: tuple[str, ...] = ()) -> int:
    """``run`` as a command: its exit status (0: done), any error logged as one line."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        run(cfg, train_command)
    except (ConfigError, ResultsError, DataError, RunsFailed) as err:
        log.error("%s", err)  # one line: it names the setting, the file or the runs
        return 1
    except Interrupted:  # SIGTERM: the running run checkpointed and is recorded interrupted
        log.warning("interrupted; rerun the same command to continue")
        return 143
    except KeyboardInterrupt:
        log.warning("interrupted; rerun the same command to continue")
        return 130
    return 0
