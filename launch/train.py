"""Train: `python launch/train.py [overrides]` or `torchrun --nproc_per_node G launch/train.py [overrides]`."""
import sys

import hydra
from _bootstrap import CONFIG_PATH
from omegaconf import DictConfig

from eval.cli import check_command_line
from trainer.validate import validate_run


@hydra.main(config_path=CONFIG_PATH, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from trainer.run import run_training

    return run_training(cfg)


if __name__ == "__main__":
    # Checked before the loop's imports (torch, transformers, peft: seconds), so a bad value fails at once.
    check_command_line(CONFIG_PATH, "train", sys.argv[1:], validate_run)
    from trainer.run import share_run_dir

    sys.argv[1:] = share_run_dir(sys.argv[1:], CONFIG_PATH)
    main()
