"""Reproduce Fig. 5: data, step-size search, replicates, the figure, tables and claims.

    python scripts/reproduce.py                                   # the paper profile
    python scripts/reproduce.py profile=smoke 'problems=[fmnist_2c2d,tolstoi_char_rnn]'
    python scripts/reproduce.py launcher=joblib                   # fan runs out locally
    python scripts/reproduce.py launcher=packed                   # N runs at once per GPU
    python scripts/reproduce.py launcher=slurm "launcher_overrides=['hydra.launcher.partition=gpu']"
    python scripts/reproduce.py parallel_seeds=1                  # no groups, even on CUDA
    python scripts/reproduce.py dry_run=true                      # the plan, nothing run

Batching (``parallel_seeds`` and ``launcher``, both ``auto`` by default): on CUDA, groups of
up to 10 runs that differ only in seed and step size (a pair's replicates, a search round's
step sizes) train as one batched computation, and groups of different pairs share the
device (``launcher=packed``); on a CPU, single runs in this process. The plan line says
which is in effect and why.

Settings: conf/reproduce.yaml and conf/search/. Every setting is checked before anything
is planned, loaded or written (for dry_run=true too): a bad one, a device this machine
lacks, or an override no (problem, optimizer) pair accepts exits with status 1 and one line
naming the setting, its value and the fix; so do runs that failed (one line naming them,
after the others of their batch finished). Resumable: rerun after an interruption and
finished runs are skipped. Outputs go to results/<profile>/fig5/. The command is
``dissecting_adam.protocol.cli.main`` (the config to objects: ``protocol.build``).
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dissecting_adam.protocol import cli

#: How Hydra launchers that take command lines only start a run (nothing is located
#: relative to the installed package).
TRAIN = (sys.executable, str(Path(__file__).resolve().with_name("train.py")))


@hydra.main(version_base="1.3", config_path="../conf", config_name="reproduce")
def main(cfg: DictConfig) -> None:
    sys.exit(cli.main(cfg, TRAIN))


if __name__ == "__main__":
    main()
