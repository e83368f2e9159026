"""Serve a run through an OpenAI-compatible server: `python launch/serve.py checkpoint=<run>/final
[serve.engine=transformers|vllm] [serve.merge=false] [serve.port=8000]`.

See models/serve.py and README's *Serving* section.
"""
import hydra
from _bootstrap import CONFIG_PATH
from omegaconf import DictConfig

from eval.cli import exit_on_user_error
from models.serve import serve_checkpoint


@hydra.main(config_path=CONFIG_PATH, config_name="inference", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        if not cfg.checkpoint:
            raise ValueError("checkpoint=<run>/final is required: the run to serve")
        serve_checkpoint(cfg.serve, cfg.checkpoint)


if __name__ == "__main__":
    main()
