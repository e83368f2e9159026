"""Export: `python launch/export.py checkpoint=<run>/final output_dir=<dir> [merge=true] [dtype=bfloat16]`.

See conf/export.yaml and models/export.py.
"""
import hydra
from _bootstrap import CONFIG_PATH
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from eval.cli import exit_on_user_error
from models.export import ExportConfig, describe_export, export_checkpoint

ConfigStore.instance().store(name="export_schema", node=ExportConfig)


@hydra.main(config_path=CONFIG_PATH, config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        what = export_checkpoint(cfg.checkpoint, cfg.output_dir, cfg.merge, cfg.dtype, cfg.max_shard_size)
    print(f"wrote {what} to {cfg.output_dir}: {describe_export(cfg.output_dir)}")


if __name__ == "__main__":
    main()
