"""`make fig3`: settings in conf/theory/fig3.yaml, the experiment in docs/theory.md."""

import hydra
from omegaconf import DictConfig, OmegaConf

from dissecting_adam.theory import fig3


@hydra.main(version_base="1.3", config_path="../conf/theory", config_name="fig3")
def main(cfg: DictConfig) -> None:
    paths = fig3.experiment(OmegaConf.to_container(cfg, resolve=True), cfg.out_dir)
    for name, path in paths.items():
        print(f"{name:>7}: {path}")


if __name__ == "__main__":
    main()
