"""Experiment loggers: ``none`` (the results store only) and ``wandb``, and the one a run's
spec asks for (``make_logger``).

The results store is the record; a logger only mirrors the evaluations elsewhere. A wandb
failure (missing package, no network, a bad key) is logged as a warning and never stops
training.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Protocol

from . import store

if TYPE_CHECKING:
    from .spec import RunSpec
    from .store import RunDir

log = logging.getLogger(__name__)


class Logger(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def finish(self, summary: dict) -> None: ...


class NoLogger:
    """``logger=none``: nothing beyond the results store."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def finish(self, summary: dict) -> None:
        pass


class WandbLogger:
    """``logger=wandb``: one wandb run per run of the store, offline unless asked otherwise.

    ``id`` derives from the run's identity, and ``resume="allow"``: a killed and resumed run
    continues the same wandb run. ``group`` is ``<problem>/<optimizer>/lr=<lr>`` and
    ``name`` carries the seed, so the wandb UI groups the seeds of one configuration; tags
    and config carry profile, problem, optimizer, lr, seed and the run's role in the
    protocol. Offline runs are uploaded later with ``wandb sync <dir>/wandb/offline-run-*``.
    """

    def __init__(
        self,
        *,
        project: str,
        group: str,
        name: str,
        config: dict,
        mode: str = "offline",
        entity: str | None = None,
        job_type: str = "train",
        tags: list[str] | None = None,
        dir: str | None = None,
        id: str | None = None,
    ):
        self.run = None
        try:
            import wandb

            self.run = wandb.init(
                project=project,
                entity=entity,
                group=group,
                name=name,
                job_type=job_type,
                tags=tags,
                config=config,
                mode=mode,
                dir=dir,
                id=id,
                resume="allow",
                reinit="create_new",  # the members of a seed-parallel group run side by side
            )
        except Exception as err:  # noqa: BLE001 - a logger must never stop training
            log.warning("wandb disabled for this run: could not start it (%s)", err)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log({**metrics, "step": step}, step=step)
        except Exception as err:  # noqa: BLE001
            log.warning("wandb logging failed at step %d (%s); continuing without it", step, err)
            self.run = None

    def finish(self, summary: dict) -> None:
        if self.run is None:
            return
        try:
            for key in ("status", "diverged_step", "steps_done", "train_time_s"):
                if summary.get(key) is not None:
                    self.run.summary[key] = summary[key]
            for key, value in (summary.get("final") or {}).items():
                self.run.summary[f"final/{key}"] = value
            self.run.finish(exit_code=0 if summary.get("status") != "failed" else 1)
        except Exception as err:  # noqa: BLE001
            log.warning("wandb finish failed (%s)", err)
        self.run = None


def log_reproduction(*, project: str, entity: str | None, mode: str, dir: str | None,
                     name: str, config: dict, images: dict, tables: dict) -> None:  # fmt: skip
    """One wandb run (``job_type="fig5"``) holding a reproduction's outputs: ``images``
    (name -> PNG path) and ``tables`` (name -> pandas DataFrame). Never raises."""
    try:
        import wandb

        run = wandb.init(project=project, entity=entity, mode=mode, dir=dir, name=name,
                         job_type="fig5", config=config, tags=["fig5", str(config.get("profile"))],
                         reinit="create_new")  # fmt: skip
        run.log({key: wandb.Image(str(path)) for key, path in images.items()})
        run.log({key: wandb.Table(dataframe=df) for key, df in tables.items() if len(df)})
        run.finish()
    except Exception as err:  # noqa: BLE001 - a logger must never stop a reproduction
        log.warning("wandb: could not log the reproduction's outputs (%s)", err)


def make_logger(spec: RunSpec, run: RunDir):
    """The logger a run's spec asks for (``none`` or ``wandb``), named and tagged for it."""
    if spec.logger.name == "none":
        return NoLogger()
    lg, lr = spec.logger, store.format_lr(spec.optimizer.lr)
    facts = {"profile": spec.profile, "problem": spec.problem, "optimizer": spec.optimizer.name,
             "lr": spec.optimizer.lr, "seed": spec.seed, "role": spec.role}  # fmt: skip
    return WandbLogger(
        project=lg.project,
        entity=lg.entity,
        mode=lg.mode,
        job_type=lg.job_type,
        tags=[
            *lg.tags,
            spec.profile,
            spec.problem,
            spec.optimizer.name,
            spec.role,
            f"lr={lr}",
            f"seed={spec.seed}",
        ],  # fmt: skip
        dir=lg.dir,
        group=f"{spec.problem}/{spec.optimizer.name}/lr={lr}",
        name=f"{spec.problem}/{spec.optimizer.name}/lr={lr}/seed={spec.seed}",
        config={**facts, "spec": spec.to_dict(), "identity": spec.identity()},
        id=wandb_id(spec, run),
    )


def wandb_id(spec: RunSpec, run: RunDir) -> str:
    """Stable over a run's resumed sessions, new for each start from step 0 (force=true)."""
    sessions = json.loads(run.environment_file.read_text()).get("sessions", [])
    starts = sum(1 for s in sessions if s.get("resumed") is False)
    key = f"{spec.problem}-{spec.optimizer.name}-{store.config_hash(spec.identity())}"
    return key if starts <= 1 else f"{key}-{starts}"
