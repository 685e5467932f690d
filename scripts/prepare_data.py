"""Download (or copy from a mirror), verify and preprocess the problems' data sets.

    python scripts/prepare_data.py                                   # all four
    python scripts/prepare_data.py problems=[fmnist_2c2d,tolstoi_char_rnn]
    python scripts/prepare_data.py problem=cifar10_3c3d              # one problem
    DATA_MIRROR=../shared/data python scripts/prepare_data.py problems=fmnist_2c2d

Settings live in conf/prepare_data.yaml. Every download is md5-verified, every extracted
file is checked against ``MANIFEST.json`` in its folder (damaged ones are regenerated from the
verified download, with a warning), and "ready" prints the data's fingerprint. Exits with
status 1 and the data error's message (which says how to fix it) when a data set is missing,
corrupt or cannot be downloaded. Downloads time out after $DISSECTING_ADAM_DOWNLOAD_TIMEOUT
seconds (default 30) per connection and read, and are tried
$DISSECTING_ADAM_DOWNLOAD_ATTEMPTS times (default 3).
"""

from __future__ import annotations

import sys
import time

import hydra
from omegaconf import DictConfig, ListConfig

from dissecting_adam.problems import PROBLEMS, DataError, load


def selected(spec) -> list[str]:
    names = list(spec) if isinstance(spec, ListConfig | list | tuple) else str(spec).split(",")
    names = [n.strip() for n in names if n.strip()]
    return list(PROBLEMS) if names == ["all"] else names


@hydra.main(version_base="1.3", config_path="../conf", config_name="prepare_data")
def main(cfg: DictConfig) -> None:
    names = selected(cfg.problem if cfg.problem else cfg.problems)
    for name in names:
        start = time.perf_counter()
        try:
            problem = load(name, data_root=cfg.data.root, mirror=cfg.data.mirror)
            problem.prepare()
            fingerprint = problem.data_fingerprint()
        except (DataError, ValueError) as err:
            print(f"{name}: FAILED\n{err}", file=sys.stderr)
            sys.exit(1)
        elapsed = time.perf_counter() - start
        print(f"{name}: ready in {cfg.data.root} (data {fingerprint}, {elapsed:.1f} s)")


if __name__ == "__main__":
    main()
