"""Serve a run through an OpenAI-compatible server: `python launch/serve.py checkpoint=<run>/final
[serve.engine=transformers|vllm] [serve.merge=false] [serve.port=8000]`.

See models/serve.py and README's *Serving* section.
"""
import sys

import hydra
from _bootstrap import CONFIG_PATH
from omegaconf import DictConfig

from data.rules import check_config
from eval.cli import check_command_line, exit_on_user_error


@hydra.main(config_path=CONFIG_PATH, config_name="inference", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from models.serve import serve_checkpoint

    with exit_on_user_error():
        check_config(cfg)
        if not cfg.checkpoint:
            raise ValueError("checkpoint=<run>/final is required: the run to serve")
        serve_checkpoint(cfg.serve, cfg.checkpoint)


if __name__ == "__main__":
    # Checked before models.serve's imports (torch, transformers: seconds), so a bad value fails at once.
    check_command_line(CONFIG_PATH, "inference", sys.argv[1:], lambda cfg, overrides: check_config(cfg))
    main()
