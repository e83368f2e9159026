"""Chat with a tuned model that can search hotels: `python launch/chat.py checkpoint=<run>/final`.

`chat.script=<file>` runs one user line per line and prints the transcript.
"""
import hydra
from _bootstrap import CONFIG_PATH
from omegaconf import DictConfig

from eval.cli import cli_overrides, exit_on_user_error
from eval.run import run_chat


@hydra.main(config_path=CONFIG_PATH, config_name="inference", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        run_chat(cfg, cli_overrides())


if __name__ == "__main__":
    main()
