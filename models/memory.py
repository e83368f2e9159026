"""Expected peak GPU memory of a training run, from the model config alone (no weights are read).

The four parts seed 000 names (weights, gradients, optimizer states, activations), with the loss's
logits split out of the activations because at long `seq_len` and a 150k vocabulary they rival the rest:

    peak = weights + optimizer states + max(activations + logits, gradients)

Optimizer states live through the whole step; activations are all alive when backward starts and are
freed layer by layer while the gradients are created, so the two meet at the ends of backward, not
summed. Everything is in bytes, per GPU; under ZeRO per rank (stage 1 shards the optimizer states over
`world_size`, stage 2 also the gradients, stage 3 also the weights).

Activations (bytes per token; a = bytes of the compute dtype, 2 under bf16/fp16 autocast; w = bytes of
the residual stream: the weights' dtype, fp32 for qlora), in the spirit of Korthikanti et al., "Reducing
Activation Recomputation in Large Transformer Models" (2022), but counted for transformers' Llama-family
layers and for attention kernels that never store the s x s score matrix (SDPA, flash, flex):

    per decoder layer
      norms          n_norms * (4h + 4)           each RMSNorm's fp32 input copy and rsqrt
      attention      a * (2q + 2kv') + 4 * heads  q, k, v, output; fp32 logsumexp
        sdpa         + a * s                      packed rows carry a block-diagonal mask, which SDPA
                                                  turns into an s x s float bias at every call
        eager        a * (q + 2kv') + (4 + a) * heads * s: q, k, v, the fp32 softmax and its copy
      MLP            3a * I                       gate (for SiLU), SiLU output, up (qlora: 3w * I)
      linear inputs  a * size of each activation a trained linear reads (full fine-tuning; o_proj's
                     input is the attention output already counted) and + w * h per norm
                     LoRA: (a + 1) * in_features per adapted linear (peft's fp32 cast comes back as
                     autocast's bf16 copy, plus CUDA's bool dropout mask; + 0 without dropout)
    with grad ckpt   layers * w * h (each layer's input) + one layer's activations (recomputed in backward);
                     `grad_ckpt_every=k`: only ceil(layers / k) layers are checkpointed, the rest keep all;
                     `grad_ckpt_policy=selective`: each checkpointed layer also keeps its base linears' outputs,
                     the attention output and LoRA's rank-r outputs, a * (q + 2kv' + 2h + 2I + q + n_lora * r)
    outside layers   final norm, RoPE cos/sin, the shared mask (sdpa: s bytes, eager: a * s)

where q = heads * head_dim, kv' = kv_heads * head_dim, or q when transformers repeats K/V for SDPA
and eager (packed rows have a mask, so SDPA's native GQA is not used). Frozen linears save nothing:
autograd keeps a matmul's input only to compute its weight's gradient (bitsandbytes' 4-bit matmul
likewise). tests/test_memory.py checks the formula against the tensors autograd saves, on CPU. With
LoRA it slightly overcounts the first layer, whose input needs no gradient.

The logits term follows `train.loss_impl` (eval/loss.py). `full`, the cross-entropy on `logits.float()`:
backward of log_softmax holds its fp32 output, incoming and outgoing gradient at once, 12 * batch * seq *
vocab bytes (forward peaks lower, at 10: bf16 logits, fp32 copy, fp32 log-probs). `chunked` holds that for
one chunk of trained tokens at a time, 12 * min(chunk, batch * seq) * vocab, plus the trained positions'
hidden states the chunks read, w * batch * seq * hidden (every token counted as trained: an upper bound).
`liger` keeps the head input's gradient instead, 4 * batch * seq * hidden, plus that hidden copy.
`document_sdpa` (models/attention.py) keeps what flash attention keeps: K/V unrepeated, no mask.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from models.config import ATTENTION, GRAD_CKPT_POLICIES

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from transformers import PretrainedConfig

    from models.config import ModelConfig

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LORA_BYTES = 4  # peft upcasts adapter weights to float32 (autocast_adapter_dtype=True)
# 4-bit weights (NF4 or FP4) in blocks of 64 with an fp32 absmax each; double quantisation stores that
# absmax in 8 bits, with an fp32 absmax per 256 blocks.
FOUR_BIT_BYTES = {True: 0.5 + 1 / 64 + 4 / (64 * 256), False: 0.5 + 4 / 64}
BNB_MIN_8BIT_SIZE, BNB_BLOCK = 4096, 256  # bitsandbytes 8-bit optimizers' defaults
PEFT_METHODS = ("none", "lora", "qlora")
LOSS_IMPLS = ("chunked", "full", "liger")  # as eval.loss.LOSS_IMPLS
# Activation sources a decoder layer's linears read.
ATTN_IN, ATTN_OUT, MLP_IN, MLP_HIDDEN = "attn_in", "attn_out", "mlp_in", "mlp_hidden"


def _adamw_torch(numel: int, param_bytes: int) -> float:
    return 2 * param_bytes * numel  # exp_avg, exp_avg_sq like the parameter (no fp32 master copy)


def _adamw_8bit(numel: int, param_bytes: int) -> float:
    if numel < BNB_MIN_8BIT_SIZE:
        return 8 * numel
    return 2 * numel + 2 * 4 * math.ceil(numel / BNB_BLOCK)  # uint8 moments + fp32 absmax per block


def _adamw_32bit(numel: int, param_bytes: int) -> float:
    return 8 * numel


# Optimizer state bytes of one trainable tensor, by `optim.name` (the names of trainer.optim.OPTIMIZERS).
OPTIMIZER_STATE_BYTES: dict[str, Callable[[int, int], float]] = {
    "adamw": _adamw_torch,
    "adamw_8bit": _adamw_8bit,
    "paged_adamw_8bit": _adamw_8bit,
    "paged_adamw_32bit": _adamw_32bit,
}


@dataclass(frozen=True)
class _Family:
    """What differs between the Llama-like architectures; None: read `config.attention_bias`."""
    qkv_bias: bool | None = False
    o_bias: bool | None = False
    fused_gate_up: bool = False
    norms_per_layer: int = 2


FAMILIES = {
    "qwen2": _Family(qkv_bias=True),
    "llama": _Family(qkv_bias=None, o_bias=None),
    "mistral": _Family(),
    "gemma2": _Family(qkv_bias=None, o_bias=None, norms_per_layer=4),
    "glm": _Family(qkv_bias=None, fused_gate_up=True),
    "glm4": _Family(qkv_bias=None, fused_gate_up=True, norms_per_layer=4),
}


@dataclass(frozen=True)
class Linear:
    name: str  # inside a decoder layer, as peft matches it: "self_attn.q_proj"
    in_features: int
    out_features: int
    bias: bool
    source: str  # the activation it reads: ATTN_IN, ATTN_OUT, MLP_IN or MLP_HIDDEN

    @property
    def params(self) -> int:
        return self.in_features * self.out_features + self.out_features * self.bias


@dataclass(frozen=True)
class Architecture:
    """The shapes of a Llama-family causal LM (Qwen2, Llama, Mistral, Gemma 2, GLM-4)."""
    model_type: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    norms_per_layer: int
    linears: tuple[Linear, ...]  # one decoder layer's

    @property
    def layer_params(self) -> int:
        return sum(lin.params for lin in self.linears) + self.norms_per_layer * self.hidden

    @property
    def params(self) -> int:
        """All parameters, tied embeddings once: layers, embeddings (+ lm_head), final norm."""
        return self.layers * self.layer_params + self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    @property
    def linear_weights(self) -> int:
        """Weights of the decoder layers' linears: what QLoRA stores in 4 bits (lm_head stays)."""
        return self.layers * sum(lin.in_features * lin.out_features for lin in self.linears)


def architecture(config: PretrainedConfig) -> Architecture:
    if config.model_type not in FAMILIES:
        raise ValueError(f"memory estimate: model_type {config.model_type!r} is not one of {list(FAMILIES)}")
    family = FAMILIES[config.model_type]
    h, inter, heads = config.hidden_size, config.intermediate_size, config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    q, kv = heads * head_dim, kv_heads * head_dim
    attention_bias = bool(getattr(config, "attention_bias", False))
    qkv_bias = attention_bias if family.qkv_bias is None else family.qkv_bias
    o_bias = attention_bias if family.o_bias is None else family.o_bias
    mlp_bias = bool(getattr(config, "mlp_bias", False))
    if family.fused_gate_up:
        up = (Linear("mlp.gate_up_proj", h, 2 * inter, mlp_bias, MLP_IN),)
    else:
        up = (Linear("mlp.gate_proj", h, inter, mlp_bias, MLP_IN), Linear("mlp.up_proj", h, inter, mlp_bias, MLP_IN))
    linears = (Linear("self_attn.q_proj", h, q, qkv_bias, ATTN_IN), Linear("self_attn.k_proj", h, kv, qkv_bias, ATTN_IN),
               Linear("self_attn.v_proj", h, kv, qkv_bias, ATTN_IN), Linear("self_attn.o_proj", q, h, o_bias, ATTN_OUT),
               *up, Linear("mlp.down_proj", inter, h, mlp_bias, MLP_HIDDEN))
    return Architecture(config.model_type, config.num_hidden_layers, h, inter, heads, kv_heads, head_dim,
                        config.vocab_size, bool(getattr(config, "tie_word_embeddings", False)),
                        family.norms_per_layer, linears)


def sharding_stage(dist: DictConfig) -> int:
    """The ZeRO stage whose memory a dist config matches: its `zero_stage`, or for FSDP 3 (weights freed
    after each layer's forward) and 2 with `reshard_after_forward=false` (a layer's gathered weights kept to
    its backward: whole weights at the peak, as ZeRO-2)."""
    if dist.get("engine") == "fsdp":
        return 3 if dist.get("reshard_after_forward", True) else 2
    return dist.get("zero_stage", 0)


@dataclass(frozen=True)
class Setup:
    """The run choices memory depends on (the CLI fills it from the Hydra config)."""
    peft: str = "lora"  # peft.method: none (full fine-tuning) | lora | qlora (4-bit base)
    lora_r: int = 8
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")  # or ("all-linear",)
    lora_dropout: float = 0.05
    dtype: str = "bfloat16"  # model.dtype: the base weights' load dtype
    precision: str = "auto"  # train.precision: activations in bf16/fp16 autocast unless fp32
    optimizer: str = "adamw"
    batch_size: int = 1  # rows per micro-batch per GPU
    seq_len: int = 4096
    grad_ckpt: bool = False
    grad_ckpt_policy: str = "full"  # train.grad_ckpt_policy
    grad_ckpt_every: int = 1  # train.grad_ckpt_every
    attn_implementation: str = "sdpa"
    loss_impl: str = "chunked"  # train.loss_impl
    loss_chunk: int = 1024  # train.loss_chunk
    zero_stage: int = 0  # 0: one GPU (or DDP); 1, 2, 3: ZeRO partitioning over world_size
    world_size: int = 1
    master_weights: bool = False  # fp32 master copy of non-fp32 trainable params (DeepSpeed/FSDP style)
    double_quant: bool = True  # qlora: peft.double_quant

    @classmethod
    def from_config(cls, cfg: DictConfig, **options: Any) -> Setup:
        """From a composed run config (model, peft, optim, train, dist groups); `options` override fields."""
        targets = cfg.peft.get("target_modules") or cfg.model.lora_target_modules
        fields = dict(peft=cfg.peft.method, lora_r=cfg.peft.get("r", 0), lora_targets=tuple(targets),
                      lora_dropout=cfg.peft.get("dropout", 0.0), dtype=cfg.model.dtype, precision=cfg.train.precision,
                      optimizer=cfg.optim.name, batch_size=cfg.train.batch_size, seq_len=cfg.train.seq_len,
                      grad_ckpt=cfg.train.grad_ckpt, grad_ckpt_policy=cfg.train.get("grad_ckpt_policy", "full"),
                      grad_ckpt_every=cfg.train.get("grad_ckpt_every", 1), attn_implementation=cfg.model.attn_implementation,
                      loss_impl=cfg.train.get("loss_impl", "chunked"), loss_chunk=cfg.train.get("loss_chunk", 1024),
                      double_quant=cfg.peft.get("double_quant", True), zero_stage=sharding_stage(cfg.dist))
        return cls(**fields | options)

    def __post_init__(self) -> None:
        for name, value, allowed in (("peft.method", self.peft, PEFT_METHODS), ("model.dtype", self.dtype, DTYPE_BYTES),
                                     ("optim.name", self.optimizer, OPTIMIZER_STATE_BYTES),
                                     ("model.attn_implementation", self.attn_implementation, ATTENTION),
                                     ("train.loss_impl", self.loss_impl, LOSS_IMPLS),
                                     ("train.grad_ckpt_policy", self.grad_ckpt_policy, GRAD_CKPT_POLICIES),
                                     ("zero stage", self.zero_stage, (0, 1, 2, 3))):
            if value not in allowed:
                raise ValueError(f"memory estimate: {name}={value!r}; allowed: {list(allowed)}")
        if self.world_size < 1:
            raise ValueError(f"memory estimate: world size {self.world_size} < 1")


def adapted_linears(arch: Architecture, targets: tuple[str, ...]) -> tuple[Linear, ...]:
    """The decoder linears LoRA wraps: names matched on their last components, as peft does;
    `all-linear` is every linear but the output head."""
    if tuple(targets) == ("all-linear",):
        return arch.linears
    unmatched = [t for t in targets if not any(f".{lin.name}".endswith(f".{t}") for lin in arch.linears)]
    if unmatched:
        raise ValueError(f"LoRA target modules {unmatched} are not linears of {arch.model_type} "
                         f"(its linears: {[lin.name.split('.')[-1] for lin in arch.linears]})")
    return tuple(lin for lin in arch.linears if any(f".{lin.name}".endswith(f".{t}") for t in targets))


def trainable_tensors(arch: Architecture, setup: Setup) -> list[tuple[int, int]]:
    """(numel, how many) of every trainable tensor: each matters to 8-bit Adam's size threshold."""
    if setup.peft == "none":
        per_layer = [lin.in_features * lin.out_features for lin in arch.linears]
        per_layer += [lin.out_features for lin in arch.linears if lin.bias] + [arch.hidden] * arch.norms_per_layer
        return ([(n, arch.layers) for n in per_layer]
                + [(arch.vocab * arch.hidden, 1 if arch.tied else 2), (arch.hidden, 1)])
    r = setup.lora_r
    return [(n, arch.layers) for lin in adapted_linears(arch, setup.lora_targets)
            for n in (r * lin.in_features, lin.out_features * r)]


def _element_bytes(setup: Setup) -> tuple[int, int]:
    """(a, w): bytes of what autocast's matmuls produce, and of the residual stream.

    QLoRA's prepare_model_for_kbit_training upcasts embeddings and norms to fp32, so its residual stream
    is fp32; bitsandbytes' 4-bit linears also return their input's dtype, so its MLP runs in fp32 too.
    """
    w = 4 if setup.peft == "qlora" else DTYPE_BYTES[setup.dtype]
    return (2 if setup.precision != "fp32" else w), w


def _layer_activations(arch: Architecture, setup: Setup, adapted: tuple[Linear, ...]) -> float:
    """Bytes one decoder layer keeps for backward, per token (module docstring)."""
    a, w = _element_bytes(setup)
    h, s, heads = arch.hidden, setup.seq_len, arch.heads
    q, kv = heads * arch.head_dim, arch.kv_heads * arch.head_dim
    full = setup.peft == "none"
    mlp = w if setup.peft == "qlora" else a
    total = arch.norms_per_layer * (4 * h + 4 + (w * h if full else 0)) + 3 * mlp * arch.intermediate
    kv_saved = q if setup.attn_implementation in ("sdpa", "eager") else kv
    if setup.attn_implementation == "eager":
        total += a * (q + 2 * kv_saved) + (4 + a) * heads * s
    else:
        total += a * (2 * q + 2 * kv_saved) + 4 * heads + (a * s if setup.attn_implementation == "sdpa" else 0)
    # peft casts a LoRA input to the adapter's fp32 and autocast back to bf16: each adapter keeps its own
    # copy, unless everything is fp32 already and there is no dropout, when it shares the layer's input.
    autocast = setup.precision != "fp32"
    shared = not autocast and a == LORA_BYTES and setup.lora_dropout == 0
    lora_copy = (a if autocast else LORA_BYTES) + (1 if setup.lora_dropout > 0 else 0)
    sizes = {ATTN_IN: h, ATTN_OUT: q, MLP_IN: h, MLP_HIDDEN: arch.intermediate}
    for source, size in sizes.items():
        lora = [lin for lin in adapted if lin.source == source]
        kept_by_attention = source == ATTN_OUT and setup.attn_implementation != "eager"
        if (full or (lora and shared)) and not kept_by_attention:
            total += a * size
        total += 0 if shared else len(lora) * lora_copy * size
    return total + len(adapted) * setup.lora_r * (a if autocast else LORA_BYTES)  # lora_A outputs


def _costly_outputs(arch: Architecture, setup: Setup, adapted: tuple[Linear, ...]) -> float:
    """Bytes per token the selective policy keeps besides a layer's input: the base linears' outputs, the
    attention output and its logsumexp, each LoRA down-projection's rank-r output (models/loading.py)."""
    a, _ = _element_bytes(setup)
    q, kv = arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim
    linears = q + 2 * kv + arch.hidden + 2 * arch.intermediate + arch.hidden  # q, k, v, o, gate, up, down
    return a * (linears + q + len(adapted) * setup.lora_r) + 4 * arch.heads


def activation_bytes(arch: Architecture, setup: Setup) -> float:
    """Saved-for-backward bytes of one micro-batch, logits excluded (module docstring)."""
    adapted = adapted_linears(arch, setup.lora_targets) if setup.peft != "none" else ()
    a, w = _element_bytes(setup)
    layer = _layer_activations(arch, setup, adapted)
    layers = arch.layers * layer
    if setup.grad_ckpt:
        checkpointed = math.ceil(arch.layers / setup.grad_ckpt_every)
        kept = w * arch.hidden + (_costly_outputs(arch, setup, adapted) if setup.grad_ckpt_policy == "selective" else 0)
        layers += checkpointed * (kept - layer) + layer
    mask = {"sdpa": 1, "eager": a}.get(setup.attn_implementation, 0) * setup.seq_len
    outside = 4 * arch.hidden + 4 + (2 * w * arch.hidden if setup.peft == "none" else 0) + 2 * w * arch.head_dim
    return setup.batch_size * setup.seq_len * (layers + outside + mask)


def loss_bytes(arch: Architecture, setup: Setup) -> float:
    """The output head's logits and the loss, by `setup.loss_impl` (module docstring)."""
    tokens = setup.batch_size * setup.seq_len
    if setup.loss_impl == "full":
        return 12 * tokens * arch.vocab
    hidden = _element_bytes(setup)[1] * tokens * arch.hidden
    if setup.loss_impl == "liger":
        return 4 * tokens * arch.hidden + hidden
    return 12 * min(setup.loss_chunk, tokens) * arch.vocab + hidden


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per GPU (per rank under ZeRO); `peak` combines them as the module docstring says."""
    weights: float
    gradients: float
    optimizer_states: float
    activations: float
    logits: float
    trainable_params: int
    total_params: int
    model_type: str
    setup: Setup
    notes: tuple[str, ...] = field(default=())

    @property
    def peak(self) -> float:
        return self.weights + self.optimizer_states + max(self.activations + self.logits, self.gradients)


def estimate_memory(config: PretrainedConfig, setup: Setup) -> MemoryBreakdown:
    """Peak GPU memory of training `config`'s model under `setup`."""
    arch = architecture(config)
    w = DTYPE_BYTES[setup.dtype]
    tensors = trainable_tensors(arch, setup)
    trainable = sum(n * count for n, count in tensors)
    full = setup.peft == "none"
    param_bytes = w if full else LORA_BYTES
    compute = {"auto": "bf16 autocast (train.precision=auto on a bf16 GPU)", "fp32": setup.dtype}
    notes = [f"activations in {compute.get(setup.precision, setup.precision + ' autocast')}"
             + ("" if setup.peft == "qlora" else f"; weights in {setup.dtype}")]
    if setup.peft == "qlora":
        four_bit = FOUR_BIT_BYTES[setup.double_quant]
        weights = arch.linear_weights * four_bit + (arch.params - arch.linear_weights) * 4
        notes.append(f"qlora: decoder linears in 4 bits{' + double quant' if setup.double_quant else ''} "
                     f"({four_bit:.3f} B/param); embeddings, norms, lm_head upcast to fp32 "
                     f"(prepare_model_for_kbit_training), so the residual stream and MLP activations are fp32")
    else:
        weights = arch.params * w
    if not full:
        weights += trainable * LORA_BYTES
        notes.append("LoRA adapters, their gradients and optimizer states in fp32 (peft upcasts adapters)")
    optimizer = sum(OPTIMIZER_STATE_BYTES[setup.optimizer](n, param_bytes) * count for n, count in tensors)
    if setup.master_weights and param_bytes != 4:
        optimizer += 4 * trainable
        notes.append("fp32 master weights counted with the optimizer states")
    elif full and w != 4:
        notes.append(f"no fp32 master weights: the loop updates the {setup.dtype} weights in place"
                     + (f" and torch AdamW keeps its moments in {setup.dtype}" if setup.optimizer == "adamw" else ""))
    if setup.optimizer.startswith("paged_"):
        notes.append("paged optimizer: states in CUDA unified memory (evictable to host RAM; "
                     "torch.cuda.max_memory_allocated does not see them)")
    gradients = trainable * param_bytes
    if setup.zero_stage:
        n, stage = setup.world_size, setup.zero_stage
        optimizer /= n
        gradients /= n if stage >= 2 else 1
        weights /= n if stage >= 3 else 1
        sharded = ", ".join(["optimizer states", "gradients", "weights"][:stage])
        notes.append(f"ZeRO-{stage} over {n} ranks: {sharded} / {n}; communication buckets"
                     f"{' and gathered layers' if stage == 3 else ''} not counted")
    if setup.attn_implementation == "sdpa":
        notes.append("sdpa on packed rows keeps an s x s float mask per layer (a*s bytes/token/layer, included); "
                     "flash_attention_2 needs none")
    notes.append("not counted: CUDA context and kernels (~0.5-1 GiB), allocator fragmentation")
    return MemoryBreakdown(weights=weights, gradients=gradients, optimizer_states=optimizer,
                           activations=activation_bytes(arch, setup),
                           logits=loss_bytes(arch, setup),
                           trainable_params=trainable, total_params=arch.params, model_type=arch.model_type,
                           setup=setup, notes=tuple(notes))


def _ckpt_label(s: Setup) -> str:
    if not s.grad_ckpt:
        return "off"
    return s.grad_ckpt_policy + (f", every {s.grad_ckpt_every} layers" if s.grad_ckpt_every > 1 else "")


def format_table(b: MemoryBreakdown) -> str:
    """The breakdown as printed by launch/estimate_memory.py."""
    s = b.setup
    method = s.peft if s.peft == "none" else f"{s.peft} r={s.lora_r} on {','.join(s.lora_targets)}"
    where = "one GPU" if not s.zero_stage else f"per rank, ZeRO-{s.zero_stage} x {s.world_size} GPUs"
    rows = [("weights", b.weights), ("gradients", b.gradients), ("optimizer states", b.optimizer_states),
            (f"activations (grad ckpt {_ckpt_label(s)})", b.activations),
            (f"logits + loss ({s.loss_impl})", b.logits),
            ("peak = weights + optimizer + max(activations + logits, gradients)", b.peak)]
    width = max(len(name) for name, _ in rows)
    lines = [f"{b.model_type}: {b.total_params / 1e9:.2f}B params, {b.trainable_params:,} trainable "
             f"({100 * b.trainable_params / b.total_params:.2f}%)",
             f"peft={method}, optim={s.optimizer}, batch {s.batch_size} x seq {s.seq_len}, "
             f"attn={s.attn_implementation}, {where}",
             f"{'':{width}}  {'GiB':>8}"]
    lines += [f"{name:{width}}  {value / GIB:8.2f}" for name, value in rows]
    lines.insert(-1, "-" * (width + 10))
    return "\n".join(lines + ["assumptions:"] + [f"  - {note}" for note in b.notes])


def load_model_config(model_cfg: ModelConfig) -> PretrainedConfig:
    """`model.path`'s config.json (the embedded tiny config for `tiny`); no weights are read."""
    from models.config import TINY

    if model_cfg.path == TINY:
        from models.tiny import tiny_config

        return tiny_config()
    from transformers import AutoConfig

    from models.loading import resolve_model_path

    return AutoConfig.from_pretrained(resolve_model_path(model_cfg), revision=model_cfg.revision,
                                      trust_remote_code=model_cfg.trust_remote_code)
