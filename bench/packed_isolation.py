"""Packed == alone on a real model with real rows: hotel dialogues longer than a sliding window, packed together.

    python bench/packed_isolation.py [--model gemma3] [--dialogues 2] [--attn sdpa,eager,document_sdpa]

The tests check isolation on real models with short dialogues and on a small Gemma 3 whose window is 16 tokens;
this runs the real Gemma 3 270M (sliding window 512 on 15 of its 18 layers) on hotel train dialogues that are
each longer than the window, packed into one row, for every attention implementation that runs on CPU. It
compares the final hidden state of every token (fp32) packed against its dialogue alone, and against the same
row with positions running straight through it (documents then see each other), which must differ.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import AutoConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.dataset import load_tools  # noqa: E402
from data.encoding import encode_messages  # noqa: E402
from data.formats import read_conversations  # noqa: E402
from data.packing import build_row, collate_rows  # noqa: E402
from data.templates import get_template  # noqa: E402
from models.loading import load_model, load_tokenizer, resolve_model_path  # noqa: E402


def compose_run(model: str):
    """`model=<model> data=hotel` as training composes it (template, files, tools, system prompt)."""
    from hydra import compose, initialize_config_dir

    from trainer.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=[f"model={model}", "data=hotel"])


def hidden(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = model.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    return out.last_hidden_state[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gemma3")
    p.add_argument("--dialogues", type=int, default=2)
    p.add_argument("--attn", default="sdpa,eager,document_sdpa")
    args = p.parse_args()
    cfg = compose_run(args.model)
    tokenizer = load_tokenizer(cfg.model)
    config_window = AutoConfig.from_pretrained(resolve_model_path(cfg.model)).sliding_window
    template = get_template(cfg.model.template, cfg.model.tool_format, tokenizer)
    data = cfg.data
    docs = []
    for conv in read_conversations(data.train, data.format, tools=load_tools(data.tools), system=data.system):
        doc = encode_messages(conv.messages, conv.tools, template, tokenizer, ["assistant"])
        if len(doc.input_ids) > config_window:
            docs.append((doc.input_ids, doc.trained))
        if len(docs) == args.dialogues:
            break
    lengths = [len(ids) for ids, _ in docs]
    print(f"{args.model}: sliding window {config_window}; one row of {sum(lengths)} tokens = dialogues of {lengths}")
    print("| attn_implementation | max abs diff packed vs alone | max abs diff leaked vs alone | isolated |")
    print("|---|---:|---:|---|")
    for attn in args.attn.split(","):
        cfg.model.attn_implementation = attn
        model = load_model(cfg.model).eval()
        row = collate_rows([build_row(docs)], tokenizer.pad_token_id)
        packed = hidden(model, row)
        alone = torch.cat([hidden(model, collate_rows([build_row([d])], tokenizer.pad_token_id)) for d in docs])
        row["position_ids"] = torch.arange(row["input_ids"].shape[1])[None]
        leaked = hidden(model, row)
        same, differ = (packed - alone).abs().max().item(), (leaked - alone).abs().max().item()
        ok = torch.allclose(packed, alone, atol=1e-4, rtol=1e-4) and differ > 1e-2
        print(f"| {attn} | {same:.2e} | {differ:.2e} | {'yes' if ok else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
