"""The memory estimator: its counts are the real models', and each term reacts to what it should."""
import dataclasses
import subprocess
import sys

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config

from conftest import ROOT, compose
from eval.loss import summed_token_loss
from models.adapters import apply_peft, count_parameters, quantization_config
from models.loading import enable_activation_checkpointing, load_model
from models.memory import (FAMILIES, OPTIMIZER_STATE_BYTES, Setup, architecture, estimate_memory, format_table,
                           load_model_config)
from trainer.optim import OPTIMIZERS, build_optimizer

QWEN2_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rope_theta=1e6,
                rms_norm_eps=1e-6, tie_word_embeddings=False)
QWEN2_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, rms_norm_eps=1e-6, tie_word_embeddings=True)
SMALL = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False)


def random_model_dir(root, shape: dict):
    """A model directory with random weights of a Qwen2 `shape` (what `model.path` can point at)."""
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(Qwen2Config(**shape), dtype=torch.bfloat16).save_pretrained(root)
    return root


def build_model(cfg, device: torch.device) -> nn.Module:
    """`cfg.model.path` loaded and adapted for training as trainer/loop.py does it."""
    model = load_model(cfg.model, device=device, quantization=quantization_config(cfg.peft))
    if cfg.train.grad_ckpt:
        enable_activation_checkpointing(model, cfg.train.grad_ckpt_policy, cfg.train.grad_ckpt_every)
    return apply_peft(model, cfg.peft, cfg.model).to(device).train()


def weight_bytes(model: nn.Module) -> int:
    """Parameter bytes, plus the scales bitsandbytes keeps beside each 4-bit weight."""
    total = 0
    for p in model.parameters():
        total += p.numel() * p.element_size()
        state = getattr(p, "quant_state", None)
        if state is not None:
            tensors = [state.absmax, state.code] + ([state.state2.absmax, state.state2.code] if state.nested else [])
            total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def packed_batch(cfg, vocab: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Random rows of two packed documents each (positions restart mid-row, as data/packing.py makes them)."""
    b, s = cfg.train.batch_size, cfg.train.seq_len
    ids = torch.randint(0, vocab, (b, s), device=device)
    positions = torch.cat([torch.arange(s // 2), torch.arange(s - s // 2)]).expand(b, s).to(device)
    return {"input_ids": ids, "position_ids": positions, "labels": ids}


@pytest.mark.parametrize("overrides", [["peft=lora"], ["peft=lora", "peft.target_modules=[all-linear]"],
                                       ["peft=none"], ["peft=qlora", "model.dtype=bfloat16"]],
                         ids=["q,v", "all-linear", "none", "qlora"])
def test_counts_and_weight_bytes_equal_the_tiny_models(overrides):
    cfg = compose(*overrides)
    base = load_model(cfg.model, quantization=quantization_config(cfg.peft))
    base_params = count_parameters(base)[1]
    model = apply_peft(base, cfg.peft, cfg.model)
    estimate = estimate_memory(load_model_config(cfg.model), Setup.from_config(cfg))
    assert estimate.trainable_params == count_parameters(model)[0]
    assert estimate.total_params == base_params
    # exact, but for the few 4-bit lookup tables (256 floats per weight) the estimate leaves out
    assert estimate.weights == pytest.approx(weight_bytes(model), rel=0.005 if "peft=qlora" in overrides else 0)
    assert estimate.gradients == sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_architecture_has_the_shapes_transformers_builds(model_type):
    extra = {"attention_bias": True, "mlp_bias": True} if model_type == "llama" else {}
    config = AutoConfig.for_model(model_type, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=100, pad_token_id=0,
                                  **extra)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    arch = architecture(config)
    real = {name: (m.in_features, m.out_features, m.bias is not None)
            for name, m in model.model.layers[0].named_modules() if isinstance(m, nn.Linear)}
    assert real == {lin.name: (lin.in_features, lin.out_features, lin.bias) for lin in arch.linears}
    assert arch.params == sum(p.numel() for p in model.parameters())


def test_unknown_targets_and_architectures_fail_clearly():
    config = Qwen2Config(**SMALL)
    with pytest.raises(ValueError, match=r"\['gate_up_proj'\] are not linears of qwen2"):
        estimate_memory(config, Setup(lora_targets=("q_proj", "gate_up_proj")))
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        estimate_memory(AutoConfig.for_model("gpt2"), Setup())
    with pytest.raises(ValueError, match=r"optim.name='sgd'; allowed: \['adamw'"):
        Setup(optimizer="sgd")


def test_every_optimizer_has_a_state_size():
    assert OPTIMIZER_STATE_BYTES.keys() == OPTIMIZERS.keys()
    config = Qwen2Config(**QWEN2_7B)
    states = {name: estimate_memory(config, Setup(optimizer=name)).optimizer_states for name in OPTIMIZERS}
    assert states["adamw"] == states["paged_adamw_32bit"] == 8 * estimate_memory(config, Setup()).trainable_params
    assert states["adamw_8bit"] == states["paged_adamw_8bit"]
    assert 0.25 < states["adamw_8bit"] / states["adamw"] < 0.26  # 2 bytes + fp32 absmax per 256, of 8


@pytest.mark.parametrize("stage, divided", [(1, {"optimizer_states"}), (2, {"optimizer_states", "gradients"}),
                                            (3, {"optimizer_states", "gradients", "weights"})])
def test_zero_stages_shard_the_right_terms(stage, divided):
    config = Qwen2Config(**QWEN2_7B)
    single = estimate_memory(config, Setup(peft="none"))
    sharded = estimate_memory(config, Setup(peft="none", zero_stage=stage, world_size=4))
    for term in ("weights", "gradients", "optimizer_states", "activations", "logits"):
        expected = getattr(single, term) / (4 if term in divided else 1)
        assert getattr(sharded, term) == pytest.approx(expected), term


def test_grad_ckpt_and_qlora_cut_what_they_should():
    config = Qwen2Config(**QWEN2_7B)
    lora = estimate_memory(config, Setup())
    ckpt = estimate_memory(config, Setup(grad_ckpt=True))
    assert ckpt.activations < lora.activations / 8
    assert dataclasses.replace(ckpt, activations=0, setup=None) == dataclasses.replace(lora, activations=0, setup=None)
    qlora = estimate_memory(config, Setup(peft="qlora"))
    # 6.5B linear weights at 4.1 bits, 1.1B embedding and head parameters in fp32
    assert 7.0 < qlora.weights / 2**30 < 7.5 < 14.0 < lora.weights / 2**30
    assert qlora.trainable_params == lora.trainable_params == 28 * 8 * (3584 + 3584 + 3584 + 512)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    return random_model_dir(tmp_path_factory.mktemp("small"), SMALL)


@pytest.mark.parametrize("overrides", [
    ["peft=none", "model.dtype=bfloat16", "train.precision=bf16"],
    ["peft=lora", "peft.dropout=0", "peft.target_modules=[all-linear]", "model.dtype=bfloat16", "train.precision=bf16"],
    ["peft=lora", "peft.dropout=0", "model.dtype=bfloat16", "train.precision=bf16", "model.attn_implementation=eager"],
    ["peft=qlora", "peft.dropout=0", "model.dtype=bfloat16", "train.precision=bf16"],
    ["peft=none", "model.dtype=float32", "train.precision=fp32"],
], ids=["full-bf16", "lora-all-linear-bf16", "lora-eager-bf16", "qlora-bf16", "full-fp32"])
def test_activations_match_the_tensors_autograd_saves(overrides, small_model):
    """On CPU: the bytes autograd keeps for backward, counted with saved-tensor hooks, against the formula.

    LoRA runs without dropout here: CPU's dropout keeps an fp32 mask where CUDA's keeps a bool one.
    """
    cfg = compose("model=qwen2", f"model.path={small_model}", *overrides, "train.batch_size=2",
                  "train.seq_len=256")
    config = Qwen2Config(**SMALL)
    model = build_model(cfg, torch.device("cpu"))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        summed_token_loss(model, packed_batch(cfg, config.vocab_size, torch.device("cpu")), impl="full")
    estimate = estimate_memory(config, Setup.from_config(cfg, loss_impl="full"))
    log_probs = 4 * 2 * 256 * config.vocab_size  # the part of the full logits term still held after forward
    assert estimate.activations + log_probs == pytest.approx(sum(saved.values()), rel=0.05)


def test_cli_prints_the_breakdown_for_a_qwen2_7b_config(tmp_path):
    Qwen2Config(**QWEN2_7B).save_pretrained(tmp_path)  # config.json only: no weights are read
    common = [sys.executable, "launch/estimate_memory.py", "model=qwen2", f"model.path={tmp_path}",
              "train.batch_size=1", "train.seq_len=4096"]
    run = subprocess.run(common, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    for line in ("qwen2: 7.62B params, 2,523,136 trainable", "weights", "gradients", "optimizer states",
                 "activations (grad ckpt off)", "logits + loss", "peak = weights + optimizer"):
        assert line in run.stdout
    setup = Setup(peft="lora", batch_size=1, seq_len=4096)
    assert format_table(estimate_memory(Qwen2Config(**QWEN2_7B), setup)) == run.stdout.strip()
    run = subprocess.run(common + ["peft=none", "--zero-stage", "3", "--world-size", "8"], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "per rank, ZeRO-3 x 8 GPUs" in run.stdout and "ZeRO-3 over 8 ranks" in run.stdout


@pytest.fixture(scope="module")
def qwen2_05b(tmp_path_factory):
    return random_model_dir(tmp_path_factory.mktemp("qwen2-0.5b"), QWEN2_05B)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("overrides", [["peft=lora"], ["peft=lora", "train.grad_ckpt=true"], ["peft=none"],
                                       ["peft=qlora"]], ids=["lora", "lora-ckpt", "full", "qlora"])
def test_estimate_is_within_15_percent_of_the_measured_peak(overrides, qwen2_05b):
    """Three optimizer steps of a Qwen2-0.5B-shaped model (random weights), as trainer/loop.py runs them."""
    cfg = compose("model=qwen2", f"model.path={qwen2_05b}", *overrides, "train.batch_size=2",
                  "train.seq_len=2048", "optim.lr=1e-5")
    config, device = Qwen2Config(**QWEN2_05B), torch.device("cuda")
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    model = build_model(cfg, device)
    optimizer = build_optimizer(model, cfg.optim, device)
    params = [p for p in model.parameters() if p.requires_grad]
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, trained = summed_token_loss(model, packed_batch(cfg, config.vocab_size, device))
        (loss / trained).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    measured = torch.cuda.max_memory_allocated() - before
    estimate = estimate_memory(config, Setup.from_config(cfg))
    del model, optimizer, params
    torch.cuda.empty_cache()
    assert estimate.peak == pytest.approx(measured, rel=0.15), format_table(estimate) + f"\nmeasured {measured / 2**30:.2f} GiB"


@pytest.mark.parametrize("dist, stage", [("fsdp", 3), ("fsdp_grad_op", 2), ("zero2", 2), ("ddp", 0)])
def test_fsdp_is_estimated_as_the_zero_stage_its_memory_matches(dist, stage):
    assert Setup.from_config(compose(f"dist={dist}")).zero_stage == stage
