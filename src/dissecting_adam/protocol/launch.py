"""Where a batch of runs is executed: in this process, or by a Hydra multirun launcher.

A launcher is a callable ``launch(specs, on_done=None)`` that returns when every run of the
batch has finished (or failed), calling ``on_done(n)`` as each part of n runs ends; the
driver then reads the outcomes from the results store, so the back ends are
interchangeable.

- ``InProcess``: the runner's ``execute_seeds`` here; the seeds of one configuration train
  ``parallel_seeds`` at a time where the problem and method allow it.
- ``HydraMultirun``: ``scripts/train.py -m hydra/launcher=<name>`` (joblib on this
  machine, submitit on a SLURM cluster), one multirun per (problem, optimizer, budget) over
  its step sizes x seeds, with overrides generated from the RunSpecs (``plan.to_overrides``).
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from ..runner.plan import can_run, to_overrides
from ..runner.session import execute_seeds
from ..runner.spec import RunSpec

log = logging.getLogger(__name__)


def _groups(specs: Sequence[RunSpec], key) -> list[list[RunSpec]]:
    groups: dict = {}
    for spec in specs:
        groups.setdefault(key(spec), []).append(spec)
    return list(groups.values())


def _config(spec: RunSpec) -> tuple:
    """Everything but the seed: runs that can train as one seed-parallel group."""
    return (spec.problem, spec.optimizer.name, spec.optimizer.lr, spec.num_steps)


@dataclass(frozen=True)
class InProcess:
    parallel_seeds: int = 1

    def __call__(self, specs: Sequence[RunSpec], on_done=None) -> None:
        k = self.parallel_seeds
        for group in _groups(specs, _config):
            parallel = k > 1 and len(group) > 1 and can_run(group[0], k)
            if parallel:
                execute_seeds(group, k)
                if on_done:
                    on_done(len(group))
                continue
            for spec in group:
                execute_seeds([spec])
                if on_done:
                    on_done(1)


@dataclass(frozen=True)
class HydraMultirun:
    """``train_command`` is how to start ``scripts/train.py`` (``[python, path]``), given by
    the calling script: nothing is located relative to the installed package.
    ``launcher_overrides`` are appended to every command (``hydra.launcher.partition=gpu``)."""

    launcher: str
    train_command: tuple[str, ...]
    launcher_overrides: tuple[str, ...] = ()

    def commands(self, specs: Sequence[RunSpec]) -> list[list[str]]:
        out = []
        for group in _groups(specs, lambda s: (s.problem, s.optimizer.name, s.num_steps)):
            lrs = sorted({s.optimizer.lr for s in group}, reverse=True)
            seeds = sorted({s.seed for s in group})
            if len(lrs) * len(seeds) == len(group):  # an lr x seed grid: one multirun
                sweeps = [(lrs, seeds)]
            else:
                sweeps = [
                    (sorted({s.optimizer.lr for s in group if s.seed == seed}, reverse=True),
                     [seed]) for seed in seeds
                ]  # fmt: skip
            base = [
                o for o in to_overrides(group[0]) if not o.startswith(("optimizer.lr=", "seed="))
            ]
            for sweep_lrs, sweep_seeds in sweeps:
                out.append([
                    *self.train_command, "-m", f"hydra/launcher={self.launcher}", *base,
                    "optimizer.lr=" + ",".join(repr(lr) for lr in sweep_lrs),
                    "seed=" + ",".join(str(s) for s in sweep_seeds),
                    *self.launcher_overrides,
                ])  # fmt: skip
        return out

    def __call__(self, specs: Sequence[RunSpec], on_done=None) -> None:
        """Run the multiruns; on a cluster (submitit) all at once, so that the scheduler
        sees every job array of the batch, on one machine (joblib) one after another."""
        commands = self.commands(specs)
        at_once = "submitit" in self.launcher or "slurm" in self.launcher
        procs = []
        for cmd in commands:
            log.info("launching %s", " ".join(cmd[2:]))
            procs.append((cmd, subprocess.Popen(cmd)))
            if not at_once:
                self._wait(*procs.pop(), on_done)
        errors = []
        for cmd, proc in procs:  # wait for every array, then report the first failure
            try:
                self._wait(cmd, proc, on_done)
            except subprocess.CalledProcessError as err:
                errors.append(err)
        if errors:
            raise errors[0]

    @staticmethod
    def _wait(cmd: list[str], proc: subprocess.Popen, on_done) -> None:
        if proc.wait() != 0:
            raise subprocess.CalledProcessError(proc.returncode, cmd)
        if on_done:
            sweep = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in cmd[2:] if "=" in o}
            on_done(len(sweep["optimizer.lr"].split(",")) * len(sweep["seed"].split(",")))
