"""Convert, deduplicate and split data: `python launch/prepare_data.py input=<file> output=<file|dir> [...]`.

Seed 001's CSV → conversations: `input=qa.csv output=train.jsonl [filter_column=is_best]`.
Any format → ours, split 8:1:1: `input=x.json format=sharegpt to=messages output=data/ split=[8,1,1]`.
"""
import hydra
from _bootstrap import CONFIG_PATH
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from data.prepare import PrepareConfig, prepare
from eval.cli import exit_on_user_error

ConfigStore.instance().store(name="prepare_schema", node=PrepareConfig)


@hydra.main(config_path=CONFIG_PATH, config_name="prepare_data", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        counts = prepare(cfg)
    print(", ".join(f"{name.replace('_', ' ')}: {count:,}" for name, count in counts.items()))


if __name__ == "__main__":
    main()
