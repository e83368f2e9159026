"""Activation checkpointing: every policy and layer stride gives plain autograd's gradients, the selective
policy keeps exactly the costly outputs, and the memory estimate orders the settings as they cut."""
import pytest
import torch
from transformers import Qwen2Config

import models.loading
from conftest import compose
from eval.loss import summed_token_loss
from models.adapters import apply_peft
from models.loading import enable_activation_checkpointing, load_model
from models.memory import Setup, estimate_memory
from test_memory import QWEN2_7B, SMALL, packed_batch, random_model_dir


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    return random_model_dir(tmp_path_factory.mktemp("small"), SMALL)


def lora_gradients(cfg, policy: str | None, every: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = load_model(cfg.model)
    if policy:
        enable_activation_checkpointing(model, policy, every)
    model = apply_peft(model, cfg.peft, cfg.model).train()
    for name, p in model.named_parameters():  # lora_B starts at zero: give A a gradient too
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    torch.manual_seed(1)
    loss, _ = summed_token_loss(model, packed_batch(cfg, SMALL["vocab_size"], torch.device("cpu")))
    loss.backward()
    checkpointed = [i for i, layer in enumerate(model.get_base_model().model.layers) if layer.gradient_checkpointing]
    assert checkpointed == (list(range(0, SMALL["num_hidden_layers"], every)) if policy else [])
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def small_cfg(small_model):
    return compose("model=qwen2", f"model.path={small_model}", "model.dtype=float32", "peft=lora", "peft.dropout=0",
                   "peft.target_modules=[all-linear]", "train.batch_size=1", "train.seq_len=128")


@pytest.fixture(scope="module")
def plain_gradients(small_cfg):
    return lora_gradients(small_cfg, None)


@pytest.mark.parametrize("policy,every", [("full", 1), ("selective", 1), ("full", 2), ("selective", 3)])
def test_checkpointing_gives_plain_autograds_gradients(policy, every, small_cfg, plain_gradients):
    grads = lora_gradients(small_cfg, policy, every)
    assert grads.keys() == plain_gradients.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_gradients[name], rtol=1e-5, atol=1e-7, msg=name)


def test_selective_policy_saves_base_matmuls_and_attention_and_reruns_the_rest(small_cfg, monkeypatch):
    decisions = []
    policy = models.loading._keep_costly_outputs

    def recording(ctx, op, *args, **kwargs):
        decision = policy(ctx, op, *args, **kwargs)
        if not ctx.is_recompute:
            decisions.append((str(op), decision == torch.utils.checkpoint.CheckpointPolicy.MUST_SAVE))
        return decision

    monkeypatch.setattr(models.loading, "_keep_costly_outputs", recording)
    lora_gradients(small_cfg, "selective")
    saved = [op for op, keep in decisions if keep]
    layers, r = SMALL["num_hidden_layers"], small_cfg.peft.r
    assert r <= models.loading.CHEAP_REDUCTION < SMALL["hidden_size"]
    # per layer: q, k, v, o, gate, up, down base matmuls and each adapter's down-projection (reduces over
    # hidden or intermediate), and one fused attention; LoRA's up-projections (over r) and all else rerun
    matmuls = [op for op in saved if "mm" in op]
    assert len(matmuls) == layers * 7 * 2
    assert len([op for op in saved if "scaled_dot_product" in op]) == layers
    assert len(saved) == layers * 15
    rerun = {op for op, keep in decisions if not keep}
    assert any("mm" in op for op in rerun)  # LoRA's rank-r up-projections
    assert any("mul" in op for op in rerun) and any("rsqrt" in op for op in rerun)  # norms, SiLU gating


def test_estimate_orders_the_settings_as_they_cut():
    config = Qwen2Config(**QWEN2_7B)
    none, full, selective, every2, selective_every2 = (
        estimate_memory(config, Setup(**options)).activations for options in (
            {}, {"grad_ckpt": True}, {"grad_ckpt": True, "grad_ckpt_policy": "selective"},
            {"grad_ckpt": True, "grad_ckpt_every": 2},
            {"grad_ckpt": True, "grad_ckpt_policy": "selective", "grad_ckpt_every": 2}))
    assert full < selective < none
    assert full < every2 < none
    assert every2 == pytest.approx((none + full) / 2, rel=0.05)  # half the layers keep everything
    assert selective < selective_every2 < none
