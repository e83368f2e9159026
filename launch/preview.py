"""Show samples as the model sees them: `python launch/preview.py [same overrides as train]`.

Trained spans are marked [[like this]], each sample headed by its dialogue and path (`one_pass`,
`per_turn`, or per turn because the chat template is not prefix-stable for it); `preview.json=true`
prints one JSON object per sample with `text`, `trained`, `dialogue` and `path`;
`preview.samples=N`, `preview.split=train|dev|test`.
"""
import json
import sys

import hydra
from _bootstrap import CONFIG_PATH
from omegaconf import DictConfig

from data.dataset import load_split
from data.rules import check_config
from data.preview import sample_records
from data.templates import get_template
from eval.cli import check_command_line
from models.loading import load_tokenizer


@hydra.main(config_path=CONFIG_PATH, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    path = cfg.data[cfg.preview.split]
    if not path:
        raise SystemExit(f"error: data.{cfg.preview.split} is not set")
    tokenizer = load_tokenizer(cfg.model)
    split = load_split(path, cfg.data, get_template(cfg.model.template, cfg.model.tool_format, tokenizer), tokenizer,
                       cfg.train.seq_len)
    for record in sample_records(split, tokenizer, cfg.preview.samples):
        path = "per_turn (chat template not prefix-stable)" if record["per_turn_fallback"] else cfg.data.multi_turn
        if cfg.preview.json:
            print(json.dumps({"text": record["text"], "trained": record["trained"], "dialogue": record["dialogue"],
                              "path": path}, ensure_ascii=False))
        else:
            print(f"── sample ({record['tokens']} tokens, dialogue {record['dialogue']}, {path}) " + "─" * 20)
            print(record["marked"])
    print(split.report(cfg.preview.split), file=sys.stderr if cfg.preview.json else sys.stdout)


if __name__ == "__main__":
    check_command_line(CONFIG_PATH, "train", sys.argv[1:], lambda cfg, overrides: check_config(cfg))
    main()
