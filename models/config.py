"""The `model` and `peft` config groups: what `conf/model/*.yaml` and `conf/peft/*.yaml` may set."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

TINY = "tiny"  # `model.path` value that selects the embedded default, built on first use


@dataclass
class ModelConfig:
    name: str = "tiny"
    path: str = TINY  # local directory or hub id
    revision: Optional[str] = None
    dtype: str = "float32"  # float32 | bfloat16 | float16: dtype the base weights are loaded in
    attn_implementation: str = "sdpa"  # eager | sdpa | flash_attention_2 | flex_attention
    template: str = "chatml"  # chat template family: chatml | llama3 | glm4 | mistral | gemma
    tool_format: str = "native"  # native (the family's own tool-call format) | custom (seed 000's search/return roles)
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    trust_remote_code: bool = False


@dataclass
class PeftConfig:
    method: str = "lora"  # none (full fine-tuning) | lora
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: Optional[list[str]] = None  # None: model.lora_target_modules; ["all-linear"] for every linear
