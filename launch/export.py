"""Export: `python launch/export.py checkpoint=<run>/final output_dir=<dir> [merge=true] [dtype=bfloat16]`.

See conf/export.yaml and models/export.py.
"""
import sys

import hydra
from _bootstrap import CONFIG_PATH
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from data.rules import check_config
from eval.cli import check_command_line, exit_on_user_error
from models.config import ExportConfig

ConfigStore.instance().store(name="export_schema", node=ExportConfig)


@hydra.main(config_path=CONFIG_PATH, config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from models.export import describe_export, export_checkpoint

    with exit_on_user_error():
        check_config(cfg)
        what = export_checkpoint(cfg.checkpoint, cfg.output_dir, cfg.merge, cfg.dtype, cfg.max_shard_size)
    print(f"wrote {what} to {cfg.output_dir}: {describe_export(cfg.output_dir)}")


if __name__ == "__main__":
    # Checked before models.export's imports (torch, transformers, peft: seconds), so a bad value fails at once.
    check_command_line(CONFIG_PATH, "export", sys.argv[1:], lambda cfg, overrides: check_config(cfg))
    main()
