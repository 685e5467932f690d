"""The one execution path: RunSpecs in, finished records out.

``execute_seeds(specs, parallel_seeds)`` runs RunSpecs of one problem and one method that
differ only in their seed and step size: finished ones are skipped at once (``force``
reruns them), the others train as groups of up to ``parallel_seeds`` members (``loop.train``
with an ``engine.Stacked``; a group of one is an ordinary single run, ``engine.Single``).
Members resume from their own checkpoints; members saved at different steps train in
separate groups. ``Session`` owns each training session's bookkeeping: it locks the run
folders (one writer per run), asks again under the locks which runs are finished, starts
the others (identity, resolved config, the environment record with the session marked
running, before the first step), removes what a killed process left (temp files), turns
SIGTERM into a checkpoint and a clean stop, records a failure in the summary of every
member that has none, and completes the session (end, wall time, status) in each member's
environment record.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

from . import backend, checkpoint, engine, files, graphs, loop, migrate, store
from .data import problem_for, resolve_device
from .environment import environment
from .loggers import make_logger
from .loop import Interrupted
from .spec import ConfigError, RunSpec
from .stopping import stop_on_sigterm
from .store import RunDir

log = logging.getLogger(__name__)

#: A run's precision as its header line says it: every setting but the default says so.
PRECISION_HEADER = {
    "tf32": "precision tf32 (default; plain fp32 on the CPU)",
    "fp32": "precision fp32 (not the default tf32: TF32 off, the paper's numerics)",
    "bf16": "precision bf16 (not the default tf32: bf16 autocast, labelled in the records)",
}


def execute(spec: RunSpec) -> dict:
    """One run: skip if finished, else train (resuming) and record. Returns its summary,
    with ``skipped`` (True when the record already existed) and ``run_dir``."""
    return execute_seeds([spec])[0]


def execute_seeds(specs: Sequence[RunSpec], parallel_seeds: int = 1) -> list[dict]:
    """Each spec (they differ in seed and step size only) in groups of ``parallel_seeds``."""
    if not specs:
        return []
    if parallel_seeds > 1:
        check_group(specs)
    check_device(specs[0].device)
    graphs.check(specs[0], resolve_device(specs[0].device), parallel_seeds)
    files.check_writable(Path(specs[0].results_root))
    # Once per call, before anything is looked up: else an old record would train again.
    migrate.refuse_unmigrated({spec.run_dir().path.parent for spec in specs})
    out: dict[int, dict] = {}
    todo = []
    for i, spec in enumerate(specs):
        done = _already_finished(spec)
        if done is not None:
            out[i] = done
        else:
            todo.append(i)
    k = max(1, int(parallel_seeds))
    for start in range(0, len(todo), k):
        group = todo[start : start + k]
        summaries = _train_group([specs[i] for i in group])
        out.update(zip(group, summaries, strict=True))
    return [out[i] for i in range(len(specs))]


def check_group(specs: Sequence[RunSpec]) -> None:
    """A ConfigError unless the specs differ in their seed and step size only."""
    first = specs[0]
    ref = first.identity()
    for spec in specs[1:]:
        if spec.derive(seed=first.seed, lr=first.optimizer.lr).identity() != ref:
            raise ConfigError(
                f"runs trained as one group must differ in seed and step size only: "
                f"{spec.problem}/{spec.optimizer.name} seed {spec.seed} differs from "
                f"{first.problem}/{first.optimizer.name} seed {first.seed} in more"
            )


def _already_finished(spec: RunSpec) -> dict | None:
    """The summary of a finished, verified record of ``spec`` (as returned), or None."""
    run = spec.run_dir()
    summary = None if spec.force else run.finished(spec.identity())
    if summary is None:
        return None
    log.info("%s: already %s, nothing to do (force=true reruns it)", run.path,
             summary["status"])  # fmt: skip
    return {**summary, "skipped": True, "run_dir": str(run.path), "precision": spec.precision}


def check_device(device: str) -> None:
    """A ConfigError (one line, before any run folder exists) for a device not present."""
    if not device.startswith("cuda"):
        if device not in ("auto", "cpu") and not device.startswith(("mps", "xpu")):
            raise ConfigError(f"device={device} is not a device; use auto, cpu, cuda or cuda:N")
        return
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ConfigError(
            f"device={device}, but this machine has no usable CUDA device (torch "
            f"{torch.__version__}, {build}); use device=cpu or device=auto"
        )
    index = torch.device(device).index
    if index is not None and index >= torch.cuda.device_count():
        raise ConfigError(
            f"device={device}, but there are {torch.cuda.device_count()} CUDA device(s): "
            f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )


def _train_group(specs: list[RunSpec]) -> list[dict]:
    first = specs[0]
    device = resolve_device(first.device)
    settings = backend.configure(
        device=device,
        precision=first.precision,
        cudnn_benchmark=first.cudnn_benchmark,
        deterministic=first.deterministic,
        flush_denormal=first.flush_denormal,
    )
    settings["compile"] = first.train.compile
    log.info("%s/%s on %s: %s", first.problem, first.optimizer.name, device,
             PRECISION_HEADER[first.precision])  # fmt: skip
    with problem_for(first, device) as problem:
        settings["channels_last"] = bool(getattr(problem, "channels_last", False))
        settings["fused_bn_relu"] = bool(getattr(problem.config, "fused_bn_relu", False))
        # Prepares and checks the data files (a DataError here leaves no run folder).
        fingerprint = problem.data_fingerprint()
        with Session(specs, device, fingerprint, settings) as session:
            trained = _train(problem, session.specs, session) if session.specs else []
            return session.in_order(trained)


def _train(problem, specs: list[RunSpec], session: Session) -> list[dict]:
    """Train the session's runs as groups of members that resume at one step (a group of
    one is a single run); return their summaries in order."""
    session.loggers = [make_logger(s, r) for s, r in zip(specs, session.runs, strict=True)]
    out: dict[int, dict] = {}
    pending = list(range(len(specs)))
    while pending:
        payloads = {i: loop.resume_payload(session.runs[i]) for i in pending}
        by_step: dict[int, list[int]] = {}
        for i in pending:
            by_step.setdefault(0 if payloads[i] is None else payloads[i]["step"], []).append(i)
        try:
            for _, group in sorted(by_step.items()):
                members = [loop.Member(session.runs[i], specs[i].seed, session.loggers[i])
                           for i in group]  # fmt: skip
                engine = _engine(problem, [specs[i] for i in group])
                summaries = loop.train(problem, members, engine, specs[group[0]].train,
                                       [payloads[i] for i in group], session.stop)  # fmt: skip
                out.update(zip(group, summaries, strict=True))
                pending = [i for i in pending if i not in group]
        except loop.Regroup:  # a checkpoint was moved aside: form the groups again
            continue
    return [
        {**out[i], "skipped": False, "run_dir": str(run.path), "precision": specs[i].precision}
        for i, run in enumerate(session.runs)
    ]


def _engine(problem, specs: list[RunSpec]):
    """One model for one run; K stacked models for a group (members may differ in seed and
    step size only)."""
    first = specs[0]
    if len(specs) == 1:
        model = problem.build_model(first.seed)
        if first.train.compile is not None:
            backend.compile_model(model, first.train.compile)
        graphed = first.train.cuda_graph  # a graph needs step counts on the device
        kwargs = {**first.optimizer.kwargs, **({"capturable": True} if graphed else {})}
        optimizer = first.optimizer.method.cls(model.parameters(), **kwargs)
        single = graphs.GraphedSingle if graphed else engine.Single
        return single(problem, model, optimizer, problem.lr_scheduler(optimizer), first.seed,
                      first.precision)  # fmt: skip

    def build(params, lr):
        return first.derive(lr=lr).optimizer.build(params)

    models = [problem.build_model(s.seed) for s in specs]
    stacked = graphs.GraphedStacked if first.train.cuda_graph else engine.Stacked
    return stacked(problem, models, build, [s.optimizer.lr for s in specs],
                   [s.seed for s in specs], first.train.compile, first.precision)  # fmt: skip


class Session:
    """One training session of one run or of a seed-parallel group (a context manager)."""

    def __init__(self, specs: list[RunSpec], device: str, data_fingerprint: str | None = None,
                 backend: dict | None = None):  # fmt: skip
        self.specs, self.device, self.data_fingerprint = specs, device, data_fingerprint
        self.backend = backend
        self.runs: list[RunDir] = [s.run_dir() for s in specs]
        self.loggers = []
        self.stop = lambda: False
        self.t0 = time.perf_counter()

    def __enter__(self) -> Session:
        self._stack = contextlib.ExitStack()
        try:
            for run in self.runs:  # one writer per run: a second copy stops here
                self._stack.enter_context(files.RunLock(run.path))
            # Again under the locks: another copy may have finished a run since the caller
            # looked, and a finished result is never trained again (nor its summary removed).
            self.found = {i: _already_finished(s) for i, s in enumerate(self.specs)}
            self.found = {i: done for i, done in self.found.items() if done is not None}
            self.members = [i for i in range(len(self.specs)) if i not in self.found]
            self.specs = [self.specs[i] for i in self.members]
            self.runs = [self.runs[i] for i in self.members]
            self.record = {"start": now_utc(), "device": self.device, "status": "running",
                           "pid": os.getpid()}  # fmt: skip
            if self.data_fingerprint is not None:  # which bytes of data this session read
                self.record["data_fingerprint"] = self.data_fingerprint
            if self.backend is not None:  # precision, cuDNN, determinism, compile: in effect
                self.record["backend"] = self.backend
            if len(self.specs) > 1:
                seeds = [s.seed for s in self.specs]
                self.record.update(parallel_seeds=len(seeds), parallel_group=seeds)
            env = environment(self.device)
            self.record.update(device_name=env.get("device_name"), host=env["host"])
            if "slurm" in env:  # this session's scheduler job (a resumed run has several)
                self.record["slurm"] = env["slurm"]
            for spec, run in zip(self.specs, self.runs, strict=True):
                config = yaml.safe_dump(spec.to_dict(), sort_keys=False)
                run.start(spec.identity(), config, force=spec.force)
                files.remove_leftovers(run.path)
                resumed = run.checkpoint_file.exists() or run.previous_checkpoint_file.exists()
                run.add_session({**self.record, "resumed": resumed})
            self.t0 = time.perf_counter()
            self.stop = self._stack.enter_context(stop_on_sigterm())
        except BaseException:
            self._stack.close()
            raise
        return self

    def in_order(self, trained: list[dict]) -> list[dict]:
        """The summaries of every spec given, in order: ``trained`` for the members trained
        (in ``self.specs`` order), the found ones for runs finished before the lock."""
        out = dict(self.found)
        out.update(zip(self.members, trained, strict=True))
        return [out[i] for i in range(len(out))]

    def __exit__(self, kind, err, tb) -> None:
        status = "failed"
        if kind is None:
            status = "completed"
        elif issubclass(kind, (Interrupted, KeyboardInterrupt)):
            status = "interrupted"
        full = files.disk_full(err)
        try:
            self._record(kind, err, status)
        except OSError as write_err:  # the records that fit are written; the rest say so
            if not (full or files.disk_full(write_err)):
                raise
            full = full or write_err
        finally:
            self._stack.close()
        if full:
            raise files.DiskFull(full, self.runs[0].path if self.runs else None) from err

    def _record(self, kind, err, status: str) -> None:
        """Each member's summary (a failure without a record of its own) and session end."""
        if kind is not None and issubclass(kind, Exception) and kind is not Interrupted:
            for run in self.runs:  # members without a record of their own failed
                if run.summary() is None:
                    error = f"{kind.__name__}: {err}"
                    run.write_summary({"status": "failed", "error": error})
        changes = {"end": now_utc(), "wall_time_s": time.perf_counter() - self.t0}
        for spec, run in zip(self.specs, self.runs, strict=True):
            member = (run.summary() or {}).get("status")
            own = member if member in store.FINISHED else status
            run.update_session(self.record["start"], {**changes, "status": own})
            if own in store.FINISHED and spec.train.stop_at is None:
                if not spec.train.keep_checkpoint:  # a finished run needs none
                    checkpoint.remove(run.checkpoint_file)
            files.remove_leftovers(run.path)
        for logger, run in zip(self.loggers, self.runs, strict=False):
            logger.finish(run.summary() or {"status": status})


def now_utc() -> str:
    """The time of a session record (UTC, seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
