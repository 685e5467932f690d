"""Reproduce Fig. 5: data, step-size search, replicates, the figure, tables and claims.

    python scripts/reproduce.py                                   # the paper profile
    python scripts/reproduce.py profile=smoke 'problems=[fmnist_2c2d,tolstoi_char_rnn]'
    python scripts/reproduce.py launcher=joblib                   # fan runs out locally

Settings: conf/reproduce.yaml and conf/search/. Resumable: rerun after an interruption and
finished runs are skipped. Outputs go to results/<profile>/fig5/.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from dissecting_adam.problems import PROBLEMS, DataError, load
from dissecting_adam.protocol.driver import reproduce
from dissecting_adam.runner.store import ResultsError
from dissecting_adam.runner.session import ConfigError

log = logging.getLogger("reproduce")


@hydra.main(version_base="1.3", config_path="../conf", config_name="reproduce")
def main(cfg: DictConfig) -> None:
    unknown = [p for p in cfg.problems if p not in PROBLEMS]
    if unknown:
        log.error("unknown problem(s) %s; choose from %s", unknown, list(PROBLEMS))
        sys.exit(1)
    try:
        for name in cfg.problems:  # data first: fail before any training if it is missing
            load(name, data_root=cfg.data.root, mirror=cfg.data.mirror).prepare()
        reproduce(cfg)
    except (ConfigError, ResultsError, DataError) as err:
        log.error("%s", err)
        sys.exit(1)


if __name__ == "__main__":
    main()
