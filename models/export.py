"""A training checkpoint → a standalone Hugging Face directory that needs nothing from this project.

Three outcomes: an adapter merged into its base (`merge=true`: LoRA, DoRA, IA3, QLoRA) → a plain
`AutoModelForCausalLM` directory; an adapter as is → `adapter_model.safetensors` + `adapter_config.json`
for `PeftModel.from_pretrained`; a full fine-tuning checkpoint → the model as is. Every export carries
the tokenizer, with the chat template that renders what training rendered, and no training state.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from data.templates import AutoTemplate, ChatTemplate, get_template
from models.adapters import PEFT_METHODS
from models.loading import torch_dtype

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")

# transformers' declarative `response_template` (tokenizer_config.json) per call format: how `transformers serve`
# (and `tokenizer.parse_response`) turns a generated turn into content and tool_calls. Without it that server
# parses calls only for model types it knows (qwen2, qwen3, gemma4). One entry per family whose calls a Jinja
# template renders; the parse is the inverse of the family's `_call_body`.
_CHATML_END = r"\s*(?:<\|im_end\|>|<\|endoftext\|>)"
_LLAMA3_END = r"<\|eot_id\|>|<\|end_of_text\|>"
RESPONSE_TEMPLATES: dict[str, dict[str, Any]] = {
    "chatml": {  # <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>, one block per call
        "defaults": {"role": "assistant"},
        "start_anchor": "<|im_start|>assistant\n",
        "fields": {
            "tool_calls": {"open_pattern": r"\s*<tool_call>", "close": "</tool_call>", "repeats": True,
                           "content": "json", "transform": {"type": "function", "function": "{content}"}},
            "content": {"close_pattern": _CHATML_END, "content": "text"},
        },
    },
    # {"name": ..., "parameters": {...}}; {"name": ...}: a call ends at a `}` before the next call or the end of
    # turn (a regex cannot balance braces: an argument string holding `}; {"name"` would be cut there).
    "llama3": {
        "defaults": {"role": "assistant"},
        "start_anchor": "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "fields": {
            "tool_calls": {"open_pattern": r'\s*(?:;\s*)?(?=\{\s*"name")',
                           "close_pattern": rf'(?<=\}})(?=\s*(?:;\s*\{{\s*"name"|{_LLAMA3_END}))', "repeats": True,
                           "content": "json", "transform": {"type": "function", "function": {
                               "name": "{content.name}", "arguments": "{content.parameters}"}}},
            "content": {"close_pattern": rf"\s*(?:{_LLAMA3_END})", "content": "text"},
        },
    },
}
RESPONSE_TEMPLATES["qwen2.5"] = RESPONSE_TEMPLATES["chatml"]


def run_config(checkpoint: Path) -> DictConfig | None:
    """The training run's resolved config.yaml: in the checkpoint, its run dir, or above checkpoints/."""
    for directory in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
        if (directory / "config.yaml").is_file():
            return OmegaConf.load(directory / "config.yaml")
    return None


def _dtype(dtype: str | None, run: DictConfig | None) -> Any:
    """The dtype to write merged or full weights in (see `ExportConfig.dtype`); "auto": as stored."""
    if dtype:
        return torch_dtype(dtype, "dtype")
    if run is None:
        return "auto"
    if PEFT_METHODS[run.peft.method].quantized:
        return torch_dtype(run.peft.compute_dtype, "peft.compute_dtype")
    return torch_dtype(run.model.dtype)


def _save_standalone(model: Any, output: Path, max_shard_size: str) -> None:
    model.config.use_cache = True  # training switched it off; an exported model serves generation
    model.save_pretrained(output, max_shard_size=max_shard_size)


def export_checkpoint(checkpoint: str | Path, output_dir: str | Path, merge: bool = False, dtype: str | None = None,
                      max_shard_size: str = "5GB") -> str:
    """Write `checkpoint` to `output_dir` as described in the module docstring; returns what was written."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint, output = Path(checkpoint).resolve(), Path(output_dir).resolve()
    adapter = checkpoint / ADAPTER_FILES[0]
    if not adapter.is_file() and not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"checkpoint={checkpoint}: neither adapter_config.json nor config.json there")
    if output.exists() and any(output.iterdir()):
        raise ValueError(f"output_dir={output} is not empty; choose a new directory")
    run = run_config(checkpoint)
    trust_remote_code = bool(run and run.model.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=trust_remote_code)

    if not adapter.is_file():  # full fine-tuning: the weights already are the model
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=_dtype(dtype, run),
                                                     trust_remote_code=trust_remote_code)
        _save_standalone(model, output, max_shard_size)
        what = "full fine-tuned model (nothing to merge)" if merge else "full fine-tuned model"
    elif not merge:
        output.mkdir(parents=True, exist_ok=True)
        for name in ADAPTER_FILES:
            shutil.copy2(checkpoint / name, output / name)
        what = "adapter (load it with PeftModel.from_pretrained on its base)"
    else:
        from peft import PeftConfig, PeftModel

        adapter_cfg = PeftConfig.from_pretrained(checkpoint)
        peft_type = adapter_cfg.peft_type.value.lower()
        if adapter_cfg.is_prompt_learning:
            raise ValueError(f"checkpoint={checkpoint} is a {peft_type} adapter: its virtual tokens are extra inputs, "
                             f"not a change to any base weight, so merge=true cannot fold them in; export it "
                             f"without merge (adapter + tokenizer, loadable with PeftModel.from_pretrained)")
        # QLoRA too: the base is loaded unquantised, so the merged weights are full precision.
        base = AutoModelForCausalLM.from_pretrained(adapter_cfg.base_model_name_or_path, revision=adapter_cfg.revision,
                                                    dtype=_dtype(dtype, run), trust_remote_code=trust_remote_code)
        merged = PeftModel.from_pretrained(base, checkpoint).merge_and_unload()
        _save_standalone(merged, output, max_shard_size)
        what = f"{peft_type} adapter merged into {adapter_cfg.base_model_name_or_path} ({merged.dtype})"
    what += _set_training_chat_template(tokenizer, run)
    tokenizer.save_pretrained(output)
    if not tokenizer.chat_template:
        what += "; note: the tokenizer has no chat template"
    return what


def call_family(template: ChatTemplate) -> str | None:
    """The family whose format the template's calls are written in (`auto`: the one whose parser reads them);
    None where no Jinja template renders them (custom roles, Mistral, GLM-4) or there are none."""
    if template.jinja() is None:
        return None
    if isinstance(template, AutoTemplate):
        return template.parser.name if template.parser else None
    return template.name


def response_template(template: ChatTemplate) -> dict[str, Any] | None:
    """What makes `transformers serve` parse this template's calls into `tool_calls`; None if not served."""
    family = call_family(template)
    return RESPONSE_TEMPLATES.get(family) if family else None


def _set_training_chat_template(tokenizer: Any, run: DictConfig | None) -> str:
    """Give the exported tokenizer the chat template that renders what training rendered (`model.template=auto`:
    the tokenizer's own, kept) and the response template that parses its calls, so a server using it prompts
    the model as it was trained and returns its calls as `tool_calls`; returns a note."""
    if run is None:
        return "; note: no config.yaml found, the tokenizer's chat template is kept as is"
    template = get_template(run.model.template, run.model.tool_format, tokenizer)
    chat_template = template.jinja()
    if chat_template is None:
        return (f"; note: no chat template renders {run.model.template!r} with tool_format={run.model.tool_format!r}, "
                "so the tokenizer's is kept: prompt the model with turnpack's template (eval/, launch/chat.py)")
    tokenizer.chat_template = chat_template
    parser = response_template(template)
    if parser:
        tokenizer.response_template = parser
    parsed = " and the response template that parses its calls" if parser else ""
    return f"; chat template: the one training used ({run.model.template}){parsed}"


def describe_export(output: Path) -> str:
    """The files of an export, one line."""
    sizes = {p.name: p.stat().st_size for p in sorted(Path(output).iterdir()) if p.is_file()}
    return ", ".join(f"{name} ({size / 2**20:.1f} MiB)" if size > 2**20 else name for name, size in sizes.items())

