"""Where a batch of runs is executed: in this process, or by a Hydra multirun launcher.

A launcher is a callable ``launch(specs, on_done=None)`` that returns when every run of the
batch has finished (or failed), calling ``on_done(n)`` as each part of n runs ends; the
driver then reads the outcomes from the results store, so the back ends are
interchangeable.

- ``InProcess``: the runner's ``execute_seeds`` here; the seeds of one configuration train
  ``parallel_seeds`` at a time where the problem and method allow it.
- ``Packed``: several runs at once on each device (``jobs_per_device``, per problem), in
  worker processes of this machine: a small problem leaves a big GPU mostly idle, and N
  runs side by side finish more runs per hour (``make gpu-check`` measures N).
- ``HydraMultirun``: ``scripts/train.py -m hydra/launcher=<name>`` (joblib on this
  machine, submitit on a SLURM cluster), one multirun per (problem, optimizer, budget) over
  its step sizes x seeds, with overrides generated from the RunSpecs (``plan.to_overrides``).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import subprocess
from collections.abc import Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass

import torch

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


def _tasks(specs: Sequence[RunSpec], parallel_seeds: int) -> list[tuple[list[RunSpec], int]]:
    """Units of work: a seed-parallel group where it can run, else one run each."""
    out = []
    for group in _groups(specs, _config):
        k = parallel_seeds
        if k > 1 and len(group) > 1 and can_run(group[0], k):
            out += [(group[i : i + k], k) for i in range(0, len(group), k)]
        else:
            out += [([spec], 1) for spec in group]
    return out


@dataclass(frozen=True)
class Packed:
    """Up to ``jobs_per_device`` runs at once on each of ``devices`` (``auto``: every CUDA
    device, else the CPU), each in a worker process; a mapping gives it per problem (a
    problem not named gets 1). On the CPU the workers share its cores (threads split).

    Workers are started fresh (``spawn``), so a method registered at run time by the
    calling script is unknown to them: register it in an imported module instead.
    """

    jobs_per_device: int | Mapping[str, int] = 1
    devices: tuple[str, ...] = ("auto",)
    parallel_seeds: int = 1

    def jobs(self, problem: str, device: str | None = None) -> int:
        """Runs of ``problem`` at once on ``device``; on the CPU at most one per core (more
        would only share the same cores)."""
        n = self.jobs_per_device
        n = int(n.get(problem, 1) if isinstance(n, Mapping) else n)
        return min(n, os.cpu_count() or 1) if device == "cpu" else n

    def resolved_devices(self) -> list[str]:
        out = []
        for device in self.devices:
            if device != "auto":
                out.append(device)
            elif torch.cuda.is_available():
                out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
            else:
                out.append("cpu")
        return list(dict.fromkeys(out))

    def __call__(self, specs: Sequence[RunSpec], on_done=None) -> None:
        tasks = _tasks(specs, self.parallel_seeds)
        if not tasks:
            return
        devices = self.resolved_devices()
        width = max(self.jobs(t[0][0].problem, d) for t in tasks for d in devices)
        on_cpu = max((self.jobs(t[0][0].problem, "cpu") for t in tasks), default=0)
        threads = max(1, (os.cpu_count() or 1) // on_cpu) if "cpu" in devices else None
        load = dict.fromkeys(devices, 0)
        pending, running, errors = list(tasks), {}, []
        context = multiprocessing.get_context("spawn")
        with futures.ProcessPoolExecutor(width * len(devices), mp_context=context) as pool:
            try:
                while pending or running:
                    for task in list(pending):  # start what fits, in order
                        problem = task[0][0].problem
                        free = [d for d in devices if load[d] < self.jobs(problem, d)]
                        if free:
                            device = min(free, key=load.get)
                            load[device] += 1
                            pending.remove(task)
                            job = pool.submit(_work, *task, device, threads)
                            running[job] = (device, task)
                    done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
                    for job in done:
                        device, (group, _) = running.pop(job)
                        load[device] -= 1
                        try:
                            job.result()
                        except Exception as err:  # the run's own record says what failed
                            log.error("%s: %s: %s", group[0].run_dir().path,
                                      type(err).__name__, err)  # fmt: skip
                            errors.append(err)
                        if on_done:
                            on_done(len(group))
            except BaseException:
                # SIGTERM or Ctrl-C here: the workers checkpoint and stop (their runs are
                # recorded as interrupted and resume on the next call).
                for process in list(getattr(pool, "_processes", {}).values()):
                    process.terminate()
                raise
        if errors:
            raise errors[0]


def _work(group: list[RunSpec], k: int, device: str, threads: int | None) -> int:
    """In a worker process: train ``group`` (k seeds at a time) on ``device``."""
    logging.basicConfig(level=logging.INFO, format=f"[{device} %(process)d] %(message)s")
    if threads is not None:
        torch.set_num_threads(threads)
    group = [_quiet(spec).derive(device=device) for spec in group]
    execute_seeds(group, k)
    return len(group)


def _quiet(spec: RunSpec) -> RunSpec:
    """Progress as log lines: one bar per worker on one terminal would be unreadable."""
    if spec.train.progress in ("auto", "bar"):
        return dataclasses.replace(spec, train=dataclasses.replace(spec.train, progress="lines"))
    return spec


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
