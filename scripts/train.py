"""Train one (problem, optimizer, step size, seed) and record it in the results store.

    python scripts/train.py problem=fmnist_2c2d optimizer=msvag optimizer.lr=0.3 seed=3
    python scripts/train.py profile=smoke                      # seconds on a CPU
    python scripts/train.py -m optimizer=msgd,mssd,msvag,adam seed='range(10)'
    python scripts/train.py -m hydra/launcher=joblib optimizer.lr=0.01,0.1
    python scripts/train.py problem=fmnist_2c2d 'seeds=[0,1,2,3,4]' parallel_seeds=5

Settings live in conf/train.yaml and its groups; docs/runner.md explains them, the store
layout and resuming. The config is resolved into RunSpecs (``plan``), which the runner
executes: a finished run of the same spec returns at once (force=true reruns), a killed
run resumes from its last checkpoint. Bad input exits with status 1 and a message that
says how to fix it.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from dissecting_adam.problems import DataError
from dissecting_adam.runner.loop import Interrupted
from dissecting_adam.runner.plan import ConfigError, plan_seeds
from dissecting_adam.runner.session import execute_seeds
from dissecting_adam.runner.store import ResultsError

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> list[dict]:
    try:
        specs, parallel_seeds = plan_seeds(cfg)
        summaries = execute_seeds(specs, parallel_seeds)
    except (ConfigError, ResultsError, DataError) as err:
        log.error("%s", err)
        sys.exit(1)
    except Interrupted as err:  # SIGTERM: checkpointed, resumes when rerun
        log.warning("%s", err)
        sys.exit(143)
    except KeyboardInterrupt:
        log.warning("interrupted; rerun the same command to resume from the last checkpoint")
        sys.exit(130)
    for summary in summaries:
        log.info("%s", describe(summary))
    return summaries


def describe(summary: dict) -> str:
    """One line: how the run ended, its final metrics, its wall time and its record."""
    word = ("already " if summary["skipped"] else "") + summary["status"]
    final = summary.get("final") or {}
    parts = [word]
    if summary.get("diverged_step") is not None:
        parts.append(f"at step {summary['diverged_step']}")
    if final.get("test_accuracy") is not None:
        parts.append(f"final test accuracy {final['test_accuracy']:.4f}")
    if final.get("train_eval_loss") is not None:
        parts.append(f"training loss {final['train_eval_loss']:.4f}")
    if summary.get("train_time_s") is not None:
        parts.append(f"{summary.get('steps_done', 0)} steps in {summary['train_time_s']:.1f} s")
    return ", ".join(parts) + f" -> {summary['run_dir']}"


if __name__ == "__main__":
    main()
