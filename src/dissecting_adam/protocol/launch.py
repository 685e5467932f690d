"""Where a batch of runs is executed: in this process, in worker processes, or by a Hydra
multirun launcher (joblib and submitit: ``submit``).

A launcher is a callable ``launch(specs, on_done=None)`` that returns when every run of the
batch has finished (or failed), calling ``on_done(n)`` as each part of n runs ends; the
driver then reads the outcomes from the results store, so the back ends are
interchangeable. ``Packed`` runs the whole batch even when some runs fail, then raises
``RunsFailed``: one line naming each failed run and why (its own record says more).
Every back end trains groups (``batching.tasks``): runs that differ only in seed and step
size, up to ``parallel_seeds`` at a time, as one batched computation where the problem and
method allow it.

- ``InProcess``: the runner's ``execute_seeds`` here, one group after another.
- ``Packed``: several groups at once on each device (``jobs_per_device``, per problem), in
  worker processes of this machine: a small problem leaves a big GPU mostly idle, and N
  tasks side by side finish more runs per hour (``make gpu-check`` measures N). A worker
  takes task after task (imports, CUDA and compiled kernels are paid once per worker), and
  within ``kept()`` (the driver's whole reproduction) the workers outlive each batch. A
  worker that dies (killed, out of memory) fails the runs it was training, recorded in
  their sessions and summaries; the runs stopped with its pool resume in a new one, and
  the batch goes on.
- ``HydraMultirun``: ``scripts/train.py -m hydra/launcher=<name>``, for the Hydra launchers
  that take command lines only (joblib and submitit get the RunSpecs themselves,
  ``submit.Joblib`` and ``submit.Submitit``): one multirun per group key over its step sizes
  x seeds, with overrides generated from the RunSpecs (``plan.to_overrides``, every value
  quoted by ``plan.override_value``); with ``parallel_seeds`` K > 1 each job trains its step
  size's seeds as ``seeds=[...] parallel_seeds=K`` (``scripts/train.py`` groups seeds only,
  so runs that differ in step size, a search round's, stay one job each).

Longer than 300 lines: three back ends behind one calling convention; the dead-worker
bookkeeping is in ``workers``, the grouping in ``batching``, the joblib and submitit back
ends in ``submit``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent import futures
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..runner.plan import can_run, to_overrides
from ..runner.session import execute_seeds
from ..runner.spec import RunSpec
from .batching import by_key, tasks
from .workers import exit_reason, finished, one_line, record_death, release, ticket_pid

log = logging.getLogger(__name__)

#: How many broken worker pools a run may be caught in (its own worker alive) before it
#: is given up as failed: a guard against a batch that never ends.
MAX_BROKEN_POOLS = 3


class RunsFailed(RuntimeError):
    """Runs of a batch failed (the others finished): one line naming each and why."""

    def __init__(self, failures: Sequence[str]):
        self.failures = list(failures)
        super().__init__(
            f"{len(self.failures)} run(s) failed: {'; '.join(self.failures)}. Each run's "
            "summary.json and environment.json record it; rerun the same command to retry "
            "them (finished runs are kept)"
        )


@dataclass(frozen=True)
class InProcess:
    parallel_seeds: int = 1

    def __call__(self, specs: Sequence[RunSpec], on_done=None) -> None:
        for group, k in tasks(specs, self.parallel_seeds):
            execute_seeds(group, k)
            if on_done:
                on_done(len(group))


@dataclass(frozen=True)
class Packed:
    """Up to ``jobs_per_device`` tasks (a group or a single run) at once on each of
    ``devices`` (``auto``: every CUDA device, else the CPU), each in a worker process; a
    mapping gives it per problem (a problem not named gets 1). On the CPU the workers share
    its cores (threads split).

    Workers are started fresh (``spawn``), so a method registered at run time by the
    calling script is unknown to them: register it in an imported module instead.
    """

    jobs_per_device: int | Mapping[str, int] = 1
    devices: tuple[str, ...] = ("auto",)
    parallel_seeds: int = 1
    # The pool kept between batches inside ``kept()`` (not part of the launcher's value).
    _kept: dict = field(default_factory=dict, compare=False, repr=False)

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

    @contextlib.contextmanager
    def kept(self) -> Iterator[Packed]:
        """The worker processes outlive each batch until the block ends: a reproduction's
        search rounds and replicates reuse them (a fresh worker pays for importing torch,
        initialising CUDA and compiling, seconds each time)."""
        self._kept["on"] = True
        try:
            yield self
        finally:
            self._kept.pop("on", None)
            pool = self._kept.pop("pool", None)
            if pool is not None:
                pool.shutdown(wait=True)

    def _executor(self, width: int) -> futures.ProcessPoolExecutor:
        """The kept pool if it is wide enough, else a new one (kept, inside ``kept()``)."""
        pool = self._kept.get("pool")
        if pool is not None and self._kept.get("width", 0) >= width:
            return pool
        if pool is not None:  # idle between batches: replace it by a wider one
            self._kept.pop("pool").shutdown(wait=True)
        context = multiprocessing.get_context("spawn")
        # Workers start as tasks need them and then take task after task.
        pool = futures.ProcessPoolExecutor(width, mp_context=context)
        if self._kept.get("on"):
            self._kept.update(pool=pool, width=width)
        return pool

    def _release_pool(self, pool: futures.ProcessPoolExecutor, broken: bool) -> None:
        """Shut ``pool`` down unless it is kept and healthy (then the next batch uses it)."""
        if broken or self._kept.get("pool") is not pool:
            if self._kept.get("pool") is pool:
                self._kept.pop("pool")
            pool.shutdown(wait=True)

    def __call__(self, specs: Sequence[RunSpec], on_done=None) -> None:
        work = tasks(specs, self.parallel_seeds)
        if not work:
            return
        devices = self.resolved_devices()
        width = max(self.jobs(t[0][0].problem, d) for t in work for d in devices)
        on_cpu = max((self.jobs(t[0][0].problem, "cpu") for t in work), default=0)
        threads = max(1, (os.cpu_count() or 1) // on_cpu) if "cpu" in devices else None
        pending = list(enumerate(work))
        failed: list[str] = []
        broken: dict[int, int] = {}  # task -> broken pools it was caught in
        with tempfile.TemporaryDirectory(prefix="packed-") as tickets:
            while pending:  # a new pool after one broke (a worker died)
                pending = self._pool(pending, devices, width, threads, Path(tickets),
                                     on_done, failed, broken)  # fmt: skip
        if failed:
            raise RunsFailed(failed)

    def _pool(self, pending, devices, width, threads, tickets: Path, on_done, failed, broken):
        """Run ``pending`` (``[(index, task)]``) in one pool of worker processes until every
        task has ended or the pool broke (a worker died); return the tasks still to run.

        Each worker writes its pid to the task's ticket first, so that when the pool
        breaks the dead worker's task is known: its runs failed (``workers.record_death``); the
        tasks stopped with the pool (SIGTERM: checkpointed, recorded interrupted) go on in
        a new pool, and resume."""
        load = dict.fromkeys(devices, 0)
        pending, running, lost, processes = list(pending), {}, [], {}
        is_broken = False
        pool = self._executor(width * len(devices))
        processes.update(getattr(pool, "_processes", None) or {})  # a kept pool's workers
        try:
            while (pending and not is_broken) or running:
                for item in [] if is_broken else list(pending):  # start what fits, in order
                    (group, k), problem = item[1], item[1][0][0].problem
                    free = [d for d in devices if load[d] < self.jobs(problem, d)]
                    if not free:
                        continue
                    device = min(free, key=load.get)
                    ticket = tickets / str(item[0])
                    ticket.unlink(missing_ok=True)
                    try:
                        job = pool.submit(_work, group, k, device, threads, str(ticket))
                    except BrokenProcessPool:  # a worker died since the last wait
                        is_broken = True
                        pending.remove(item)
                        lost.append(item)
                        break
                    load[device] += 1
                    pending.remove(item)
                    running[job] = (device, item)
                    processes.update(getattr(pool, "_processes", None) or {})
                if not running:
                    break
                done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
                for job in done:
                    device, item = running.pop(job)
                    group = item[1][0]
                    load[device] -= 1
                    try:
                        job.result()
                    except BrokenProcessPool:
                        is_broken = True
                        lost.append(item)
                        continue
                    except Exception as err:  # the runs' own records say what failed
                        why = f"{type(err).__name__}: {one_line(err)}"
                        log.error("%s: %s", group[0].run_dir().path, why)
                        failed += [f"{spec.run_dir().path} ({why})" for spec in group
                                   if not finished(spec)]  # fmt: skip
                    if on_done:
                        on_done(len(group))
        except BaseException:
            # SIGTERM or Ctrl-C here: the workers checkpoint and stop (their runs are
            # recorded as interrupted and resume on the next call).
            for process in list(getattr(pool, "_processes", None) or {}).values():
                process.terminate()
            self._release_pool(pool, broken=True)
            raise
        self._release_pool(pool, broken=bool(lost))
        if not lost:
            return pending
        # The pool is shut down: every worker has ended, and its exit code says how.
        codes = {pid: p.exitcode for pid, p in processes.items()}
        again = []
        for item in lost:
            index, (group, _) = item
            pid = ticket_pid(tickets / str(index))
            code = codes.get(pid)
            if code is not None and code not in (0, -signal.SIGTERM):  # its worker died
                why = f"worker process {pid} died ({exit_reason(code)})"
            elif broken.get(index, 0) + 1 >= MAX_BROKEN_POOLS:
                why = f"its worker pool broke {MAX_BROKEN_POOLS} times while it ran"
            else:  # stopped with the pool: it goes on in a new one
                broken[index] = broken.get(index, 0) + 1
                for spec in group:
                    release(spec, set(codes))
                again.append(item)
                continue
            log.error("%s: %s", group[0].run_dir().path, why)
            for spec in group:
                line = record_death(spec, pid, why)
                if line:
                    failed.append(line)
            if on_done:
                on_done(len(group))
        if again or pending:
            log.warning("a worker process died; %d run(s) go on in a new pool",
                        sum(len(task[0]) for _, task in again + pending))  # fmt: skip
        return again + pending  # those stopped with the pool first: they resume


def _work(group: list[RunSpec], k: int, device: str, threads: int | None, ticket: str) -> int:
    """In a worker process: train ``group`` (k seeds at a time) on ``device``; first write
    this process's pid to ``ticket`` (which worker took the task)."""
    Path(ticket).write_text(str(os.getpid()))
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
    parallel_seeds: int = 1

    def commands(self, specs: Sequence[RunSpec]) -> list[list[str]]:
        out = []
        for group in by_key(specs):
            base = [
                o for o in to_overrides(group[0]) if not o.startswith(("optimizer.lr=", "seed="))
            ]
            for lrs, seeds, grouped in self._sweeps(group):
                seed_arg = (f"seeds=[{','.join(map(str, seeds))}]" if grouped
                            else "seed=" + ",".join(map(str, seeds)))  # fmt: skip
                out.append([
                    *self.train_command, "-m", f"hydra/launcher={self.launcher}", *base,
                    "optimizer.lr=" + ",".join(repr(lr) for lr in lrs), seed_arg,
                    *([f"parallel_seeds={self.parallel_seeds}"] if grouped else []),
                    *self.launcher_overrides,
                ])  # fmt: skip
        return out

    def _sweeps(self, group: list[RunSpec]) -> list[tuple[list[float], list[int], bool]]:
        """``(step sizes, seeds, grouped)`` per multirun of ``group`` (runs that differ in
        seed and step size only). Grouped: each job (one step size) trains its seeds as
        ``seeds=[...] parallel_seeds=K``; ``scripts/train.py`` groups seeds only, so runs
        that differ in step size alone (a search round's) stay one job per run."""
        lrs = sorted({s.optimizer.lr for s in group}, reverse=True)
        seeds_of = {lr: sorted(s.seed for s in group if s.optimizer.lr == lr) for lr in lrs}
        k = self.parallel_seeds
        if k > 1 and can_run(group[0], k) and any(len(v) > 1 for v in seeds_of.values()):
            by_seeds: dict[tuple[int, ...], list[float]] = {}
            for lr in lrs:
                by_seeds.setdefault(tuple(seeds_of[lr]), []).append(lr)
            return [(v, list(seeds), len(seeds) > 1) for seeds, v in by_seeds.items()]
        seeds = sorted({s.seed for s in group})
        if len(lrs) * len(seeds) == len(group):  # an lr x seed grid: one multirun
            return [(lrs, seeds, False)]
        return [(sorted({s.optimizer.lr for s in group if s.seed == seed}, reverse=True),
                 [seed], False) for seed in seeds]  # fmt: skip

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
            seeds = sweep["seeds"].strip("[]") if "seeds" in sweep else sweep["seed"]
            on_done(len(sweep["optimizer.lr"].split(",")) * len(seeds.split(",")))
