"""Served prompt == training prompt, token for token, for every assistant turn of a split (vLLM's /tokenize).

`python bench/serve_prompts.py checkpoint=<run>/final serve.url=http://127.0.0.1:PORT/v1 serve.model=NAME`
asks the server to tokenize each turn's gold history with the tools (its chat template, generation prompt
added) and compares with what training tokenised before that turn (the run's template, no special tokens
added). Prints one JSON line: turns, equal, and the first differing turn if any.
"""
import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "launch"))
from _bootstrap import CONFIG_PATH  # noqa: E402

from eval.cli import cli_overrides, exit_on_user_error  # noqa: E402
from data.templates import get_template  # noqa: E402
from eval.run import resolve_config, split_path  # noqa: E402
from eval.served import chat_messages  # noqa: E402
from eval.turns import load_turns  # noqa: E402
from models.loading import load_tokenizer  # noqa: E402
from models.serve import openai_client  # noqa: E402


@hydra.main(config_path=CONFIG_PATH, config_name="inference", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        cfg = resolve_config(cfg, cli_overrides())
        tokenizer = load_tokenizer(OmegaConf.merge(cfg.model, {"path": str(cfg.checkpoint)}))
        template = get_template(cfg.model.template, cfg.model.tool_format, tokenizer)
        turns = load_turns(split_path(cfg), cfg.data, template, cfg.eval.subset)
        root = openai_client(cfg.serve.url.removesuffix("/v1"), cfg.serve.api_key)
        equal, first_difference = 0, None
        for turn in turns:
            served = root.post("/tokenize", cast_to=object, body={
                "model": cfg.serve.model, "messages": chat_messages(turn.history), "tools": list(turn.tools),
                "add_generation_prompt": True, "add_special_tokens": False})["tokens"]
            trained = tokenizer(turn.prompt, add_special_tokens=False)["input_ids"]
            equal += served == trained
            if served != trained and first_difference is None:
                first_difference = {"source": turn.source, "turn": turn.index, "served": tokenizer.decode(served),
                                    "trained": turn.prompt}
        print(json.dumps({"turns": len(turns), "equal": equal, "first_difference": first_difference},
                         ensure_ascii=False))


if __name__ == "__main__":
    main()
