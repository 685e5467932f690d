"""Experiment loggers: ``none`` (the results store only) and ``wandb``.

The results store is the record; a logger only mirrors the evaluations elsewhere. A wandb
failure (missing package, no network, a bad key) is logged as a warning and never stops
training.
"""

from __future__ import annotations

import logging
from typing import Protocol

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
    """``logger=wandb``: one wandb run per training session, offline unless asked otherwise.

    ``group`` is ``<problem>/<optimizer>/lr=<lr>`` and ``name`` carries the seed, so the
    wandb UI groups the seeds of one configuration. Offline runs are uploaded later with
    ``wandb sync <dir>/wandb/offline-run-*``.
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
                reinit="finish_previous",
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
            for key in ("status", "diverged_step", "steps_done"):
                if summary.get(key) is not None:
                    self.run.summary[key] = summary[key]
            self.run.finish(exit_code=0 if summary.get("status") != "failed" else 1)
        except Exception as err:  # noqa: BLE001
            log.warning("wandb finish failed (%s)", err)
        self.run = None
