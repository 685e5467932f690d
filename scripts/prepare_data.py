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
$DISSECTING_ADAM_DOWNLOAD_ATTEMPTS times (default 3). The command is
``dissecting_adam.protocol.commands.prepare_data``.
"""

import sys

import hydra
from omegaconf import DictConfig

from dissecting_adam.protocol import commands


@hydra.main(version_base="1.3", config_path="../conf", config_name="prepare_data")
def main(cfg: DictConfig) -> None:
    sys.exit(commands.prepare_data(cfg))


if __name__ == "__main__":
    main()
