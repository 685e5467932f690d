"""Launchers that submit the RunSpecs themselves: joblib and submitit, through their Python
APIs.

Each pickles a callable (``train_task``, or ``TrainTask`` for submitit) and its arguments,
a group of RunSpecs and its size K, and the worker trains exactly the runs the driver
planned: no command line in between, so nothing is re-planned, quoted or re-parsed on the
way (``launch.HydraMultirun`` remains for the Hydra launchers that take command lines
only). Their settings are those of the Hydra plugins (``conf/hydra/launcher/*.yaml`` with
``launcher_overrides``, read by ``build``), so ``launcher=slurm
"launcher_overrides=['hydra.launcher.partition=gpu']"`` means what it means to
``scripts/train.py -m``.

Like ``launch.Packed``, both run the whole batch even when some runs fail, then raise
``launch.RunsFailed``: one line naming each failed run and why.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..runner.session import execute_seeds
from ..runner.spec import RunSpec
from .batching import tasks
from .launch import RunsFailed
from .workers import finished, one_line

log = logging.getLogger(__name__)

#: The settings submitit's executors take as they are; the others get the cluster's prefix
#: (``partition`` -> ``slurm_partition``), as in Hydra's submitit plugin.
BASE_SETTINGS = ("timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb",
                 "nodes", "name", "stderr_to_stdout")  # fmt: skip
#: Seconds between two looks at the cluster's queue while waiting for a batch.
POLL_S = 2.0


def train_task(group: list[RunSpec], k: int) -> tuple[int, list[str]]:
    """In a worker (a joblib process, a submitit job): train ``group``, ``k`` seeds at a
    time. Returns how many runs it had and one line per run that failed (its record says
    more); SIGTERM (a checkpointed, interrupted run) and Ctrl-C propagate."""
    logging.basicConfig(level=logging.INFO, format="[%(process)d] %(message)s")
    try:
        execute_seeds(group, k)
    except Exception as err:  # the runs' own records say what failed
        why = f"{type(err).__name__}: {one_line(err)}"
        return len(group), [f"{s.run_dir().path} ({why})" for s in group if not finished(s)]
    return len(group), []


class TrainTask:
    """``train_task`` for submitit: a job that reaches its time limit is requeued with the
    same arguments (``checkpoint``, submitit's hook; up to ``max_num_timeout`` times), and
    its runs resume from their last checkpoints."""

    def __call__(self, group: list[RunSpec], k: int) -> tuple[int, list[str]]:
        return train_task(group, k)

    def checkpoint(self, group: list[RunSpec], k: int):
        import submitit

        return submitit.helpers.DelayedSubmission(self, group, k)


@dataclass(frozen=True)
class Joblib:
    """The batch's groups in joblib workers (``joblib.Parallel(**settings)``: ``n_jobs``,
    ``backend``, ... as ``hydra/launcher=joblib`` has them); loky's workers are reused from
    batch to batch."""

    settings: Mapping = field(default_factory=dict)
    parallel_seeds: int = 1

    def __call__(self, specs: Sequence[RunSpec], on_done=None) -> None:
        import joblib

        work = tasks(specs, self.parallel_seeds)
        if not work:
            return
        parallel = joblib.Parallel(**self.settings, return_as="generator_unordered")
        failed: list[str] = []
        for n, lines in parallel(joblib.delayed(train_task)(g, k) for g, k in work):
            failed += lines
            if on_done:
                on_done(n)
        if failed:
            raise RunsFailed(failed)


@dataclass(frozen=True)
class Submitit:
    """The batch's groups as one submitit job array on ``cluster`` (``slurm``; ``local``:
    processes of this machine), logs in ``folder`` (``%j``: the job id); ``settings`` are
    those of Hydra's submitit plugin (``timeout_min``, ``partition``, ``max_num_timeout``)."""

    cluster: str
    folder: str
    settings: Mapping = field(default_factory=dict)
    parallel_seeds: int = 1

    def executor(self):
        import submitit

        settings = dict(self.settings)
        init = {"folder": self.folder}
        if "max_num_timeout" in settings:
            init[f"{self.cluster}_max_num_timeout"] = settings.pop("max_num_timeout")
        executor = submitit.AutoExecutor(cluster=self.cluster, **init)
        executor.update_parameters(**{
            k if k in BASE_SETTINGS else f"{self.cluster}_{k}": v for k, v in settings.items()
        })  # fmt: skip
        return executor

    def __call__(self, specs: Sequence[RunSpec], on_done=None) -> None:
        import submitit

        work = tasks(specs, self.parallel_seeds)
        if not work:
            return
        jobs = self.executor().map_array(TrainTask(), [g for g, _ in work], [k for _, k in work])
        groups = {id(job): group for job, (group, _) in zip(jobs, work, strict=True)}
        log.info(
            "submitted %d job(s) for %d run(s): %s",
            len(jobs),
            len(specs),
            ", ".join(job.job_id for job in jobs[:3]) + (" ..." if len(jobs) > 3 else ""),
        )
        failed: list[str] = []
        for job in submitit.helpers.as_completed(jobs, poll_frequency=POLL_S):
            group = groups[id(job)]
            try:
                _, lines = job.result()
            except Exception as err:  # the job itself failed (killed, cancelled, node lost)
                why = f"job {job.job_id}: {type(err).__name__}: {one_line(err)[:300]}"
                log.error("%s: %s", group[0].run_dir().path, why)
                lines = [f"{s.run_dir().path} ({why})" for s in group if not finished(s)]
            failed += lines
            if on_done:
                on_done(len(group))
        if failed:
            raise RunsFailed(failed)
