"""Evaluate a checkpoint: `python launch/evaluate.py checkpoint=<run>/final [eval=hotel|truthfulqa|loss]`.

Re-score a predictions file without a model: `python launch/evaluate.py eval.predictions=<file>`.
Results go to `<checkpoint>/eval/<name>[_<split>]/` or `output_dir=<dir>`.
"""
import hydra
from _bootstrap import CONFIG_PATH
from omegaconf import DictConfig

from eval.cli import cli_overrides, exit_on_user_error
from eval.run import run_evaluation


@hydra.main(config_path=CONFIG_PATH, config_name="inference", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        run_evaluation(cfg, cli_overrides())


if __name__ == "__main__":
    main()
