"""Train: `python launch/train.py [overrides]` or `torchrun --nproc_per_node G launch/train.py [overrides]`."""
import sys

import hydra
from _bootstrap import CONFIG_PATH
from omegaconf import DictConfig

from trainer.run import run_training, share_run_dir


@hydra.main(config_path=CONFIG_PATH, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return run_training(cfg)


if __name__ == "__main__":
    sys.argv[1:] = share_run_dir(sys.argv[1:], CONFIG_PATH)
    main()
