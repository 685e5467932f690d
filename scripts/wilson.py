"""`make wilson`: settings in conf/theory/wilson.yaml, the experiment in docs/theory.md."""

import hydra
from omegaconf import DictConfig, OmegaConf

from dissecting_adam.theory import wilson


@hydra.main(version_base="1.3", config_path="../conf/theory", config_name="wilson")
def main(cfg: DictConfig) -> None:
    paths = wilson.experiment(OmegaConf.to_container(cfg, resolve=True), cfg.out_dir)
    for name, path in paths.items():
        print(f"{name:>7}: {path}")


if __name__ == "__main__":
    main()
