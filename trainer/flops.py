"""Training FLOPs of a micro-batch, counted for what the method actually computes, and device peaks.

Per token, every linear layer (base weights, LoRA/DoRA adapters, LM head) costs 2 FLOPs per weight
forward and 2 more backward for the gradient of its input; only trainable weights cost the further
2 of their own weight-gradient matmul, so a LoRA step is far cheaper than 6 × parameters. Causal
attention costs 2 × head_dim FLOPs per (query, key) pair for the scores and as many for the weighted
sum, twice that backward, over each packed document's own pairs L(L+1)/2: packed documents do not
attend to each other, and padding is not counted. Full gradient checkpointing runs the checkpointed decoder
layers' forward once more during backward; the selective policy keeps the matmul and attention outputs, so it
reruns only element-wise work. Element-wise work (norms, activations, softmax, the DoRA
magnitude) is left out, as usual for MFU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

# Dense bf16/fp16 tensor-core peaks in TFLOP/s, matched in order against torch.cuda.get_device_name().
PEAK_TFLOPS_BF16 = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("H200", 989.0),  # and GH200
    ("A100", 312.0),
)


@dataclass(frozen=True)
class ModelFlops:
    """Per-token matmul sizes of a model as adapted for training (see the module docstring)."""

    matmul_weights: int  # weights of every linear layer a token passes through
    trainable_weights: int  # of those, the ones that receive a weight gradient
    layer_weights: int  # of those, the ones inside decoder layers (rerun under gradient checkpointing)
    attention_width: int  # decoder layers × query heads × head_dim
    rerun_share: float = 0.0  # share of the decoder layers whose forward matmuls run again in the backward

    def training(self, doc_lengths: Iterable[int]) -> float:
        """FLOPs of one forward + backward over documents of these lengths."""
        lengths = list(doc_lengths)
        tokens = sum(lengths)
        pairs = sum(n * (n + 1) // 2 for n in lengths)
        attention = 4 * self.attention_width * pairs  # forward: scores + weighted sum
        forward = 2 * self.matmul_weights * tokens + attention
        backward = (2 * self.matmul_weights + 2 * self.trainable_weights) * tokens + 2 * attention
        recompute = self.rerun_share * (2 * self.layer_weights * tokens + attention)
        return float(forward + backward + recompute)


def model_flops(model: nn.Module, rerun_every: int = 0) -> ModelFlops:
    """Read the matmul sizes off the model: linear layers, which weights train, the attention shape.
    `rerun_every=k`: every k-th decoder layer's matmuls run again in the backward (0: none)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    in_layers = {id(m) for layer in model.modules() if isinstance(layer, GradientCheckpointingLayer)
                 for m in layer.modules()}
    matmul = trainable = layer = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            n = module.in_features * module.out_features  # exact also for packed 4-bit weights
            matmul += n
            trainable += n if module.weight.requires_grad else 0
            layer += n if id(module) in in_layers else 0
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    layers = config.num_hidden_layers
    width = layers * config.num_attention_heads * head_dim
    rerun = math.ceil(layers / rerun_every) / layers if rerun_every else 0.0
    return ModelFlops(matmul, trainable, layer, width, rerun)


def document_lengths(position_ids: torch.Tensor) -> list[int]:
    """Lengths of the packed documents of one row: positions restart at 0 at each document."""
    starts = (position_ids == 0).nonzero().flatten().tolist()
    return [end - start for start, end in zip(starts, starts[1:] + [len(position_ids)])]


def peak_flops(peak_tflops: float | None, device: torch.device, compute_dtype: torch.dtype) -> float | None:
    """Per-device peak FLOP/s for MFU: `perf.peak_tflops`, else the known bf16/fp16 peak of a CUDA device
    computing in bf16/fp16; None (no MFU) on CPU, in fp32 or on an unknown device."""
    if peak_tflops:
        return peak_tflops * 1e12
    if device.type != "cuda" or compute_dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for marker, tflops in PEAK_TFLOPS_BF16 if marker in name), None)
