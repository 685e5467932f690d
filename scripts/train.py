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
says how to fix it. The command is ``dissecting_adam.protocol.commands.train``.
"""

import sys

import hydra
from omegaconf import DictConfig

from dissecting_adam.protocol import commands


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> list[dict]:
    status, summaries = commands.train(cfg)
    if status:
        sys.exit(status)
    return summaries  # a multirun's job returns


if __name__ == "__main__":
    main()
