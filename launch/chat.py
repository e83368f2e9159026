"""Chat with a tuned model that can search hotels: `python launch/chat.py checkpoint=<run>/final`.

`chat.script=<file>` runs one user line per line and prints the transcript.
"""
import sys

import hydra
from _bootstrap import CONFIG_PATH
from omegaconf import DictConfig

from data.rules import check_config
from eval.cli import check_command_line, cli_overrides, exit_on_user_error


@hydra.main(config_path=CONFIG_PATH, config_name="inference", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from eval.run import run_chat

    with exit_on_user_error():
        check_config(cfg)
        run_chat(cfg, cli_overrides())


if __name__ == "__main__":
    # Checked before eval.run's imports (torch, transformers, peft: seconds), so a bad value fails at once.
    check_command_line(CONFIG_PATH, "inference", sys.argv[1:], lambda cfg, overrides: check_config(cfg))
    main()
