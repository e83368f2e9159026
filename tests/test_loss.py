"""The chunked loss (only trained positions reach the output head, a chunk at a time) equals the plain
full-logits computation, in value and in every gradient, for every PEFT method and both kinds of head."""
import pytest
import torch

from conftest import nudge_trainable
from data.packing import build_row, collate_rows
from eval.loss import summed_token_loss, trained_positions
from models.adapters import PEFT_METHODS, apply_peft, quantization_config
from models.config import ModelConfig, PeftConfig
from models.loading import load_model

CHUNK = 16  # small, so each batch's trained tokens span several chunks and a ragged last one


def random_docs(n: int = 3, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """(input_ids, trained) documents of different lengths, about half their tokens trained."""
    g = torch.Generator().manual_seed(seed)
    docs = []
    for length in (37, 58, 23)[:n]:
        ids = torch.randint(10, 8000, (length,), generator=g).tolist()
        trained = [0] * (length // 3) + torch.randint(0, 2, (length - length // 3,), generator=g).tolist()
        docs.append((ids, trained))
    return docs


def adapted_model(method: str, path: str, attn: str = "sdpa") -> torch.nn.Module:
    """`path` with `method` applied (dropout off, QLoRA computing in fp32) and its trainable weights
    nudged off their often no-op init, so every gradient is non-trivial."""
    peft_cfg = PeftConfig(method=method, dropout=0.0, target_modules=["all-linear"],
                          **({"compute_dtype": "float32"} if method == "qlora" else {}))
    model_cfg = ModelConfig(path=path, attn_implementation=attn)
    model = apply_peft(load_model(model_cfg, quantization=quantization_config(peft_cfg)), peft_cfg, model_cfg)
    torch.manual_seed(1)
    return nudge_trainable(model, 0.02).eval()


def loss_and_grads(model: torch.nn.Module, batch: dict, **loss_options) -> tuple[torch.Tensor, int, dict]:
    model.zero_grad(set_to_none=True)
    loss, count = summed_token_loss(model, batch, **loss_options)
    loss.backward()
    return loss.detach(), count, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def head_rows(model: torch.nn.Module, run) -> list[int]:
    """How many positions each call of the output head received while `run()` ran."""
    seen = []
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda m, args, out: seen.append(out.shape[:-1].numel()))
    try:
        run()
    finally:
        handle.remove()
    return seen


@pytest.fixture(scope="module", params=["tied-qwen2", "untied-llama"])
def model_path(request):
    return "tiny" if request.param == "tied-qwen2" else str(request.getfixturevalue("untied_llama_dir"))


@pytest.mark.parametrize("method", list(PEFT_METHODS))
def test_chunked_loss_and_gradients_equal_the_full_logits_computation(method, model_path):
    model = adapted_model(method, model_path)
    docs = random_docs()
    if PEFT_METHODS[method].packs:
        batch = collate_rows([build_row(docs[:2]), build_row(docs[2:])], pad_id=0)
    else:  # virtual tokens in front of each row: one document per row, padded, masked
        batch = collate_rows([build_row([d]) for d in docs], pad_id=0, attention_mask=True)
    full_loss, full_count, full_grads = loss_and_grads(model, batch, impl="full")
    chunked_rows = head_rows(model, lambda: loss_and_grads(model, batch, impl="chunked", chunk=CHUNK))
    loss, count, grads = loss_and_grads(model, batch | {"trained_index": trained_positions(batch["labels"])},
                                        impl="chunked", chunk=CHUNK)
    assert count == full_count == int((batch["labels"] != -100).sum()) > 2 * CHUNK
    torch.testing.assert_close(loss, full_loss, rtol=1e-6, atol=1e-5)
    assert grads.keys() == full_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], full_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # Only trained positions reached the head, at most CHUNK at a time (backward recomputes each chunk),
    # where the plain computation sends it every position of every row, virtual tokens included.
    expected = [min(CHUNK, count - s) for s in range(0, count, CHUNK)]
    assert chunked_rows == [0] + expected + expected[::-1]
    full_rows = head_rows(model, lambda: loss_and_grads(model, batch, impl="full"))
    assert full_rows[0] >= batch["labels"].numel() > count


def test_gemma2_logit_softcap_is_applied_per_chunk(tmp_path):
    """Gemma 2 soft-caps its logits after the head; the chunked loss does too."""
    from conftest import tiny_variant_dir

    path = tiny_variant_dir(tmp_path, "gemma2", head_dim=64, final_logit_softcapping=2.0, sliding_window=4096)
    model = adapted_model("lora", str(path), attn="eager")
    batch = collate_rows([build_row(random_docs())], pad_id=0)
    full, _, full_grads = loss_and_grads(model, batch, impl="full")
    chunked, _, grads = loss_and_grads(model, batch, impl="chunked", chunk=CHUNK)
    torch.testing.assert_close(chunked, full, rtol=1e-6, atol=1e-5)
    for name in grads:
        torch.testing.assert_close(grads[name], full_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    model.config.final_logit_softcapping = None  # the check can fail: without the cap the loss differs
    assert (summed_token_loss(model, batch, impl="chunked")[0] - full).abs() > 1e-2


def test_no_trained_token_still_gives_a_zero_loss_with_a_graph():
    model = adapted_model("none", "tiny")
    batch = collate_rows([build_row(random_docs(1))], pad_id=0)
    batch["labels"].fill_(-100)
    loss, count, grads = loss_and_grads(model, batch, impl="chunked")
    assert count == 0 and loss.item() == 0.0 and grads and all(not g.any() for g in grads.values())


def test_unknown_loss_impl_and_bad_chunk_fail_clearly():
    model = adapted_model("lora", "tiny")
    batch = collate_rows([build_row(random_docs(1))], pad_id=0)
    with pytest.raises(ValueError, match=r"train.loss_impl='fused'; allowed: \['chunked', 'full', 'liger'\]"):
        summed_token_loss(model, batch, impl="fused")
    with pytest.raises(ValueError, match="train.loss_chunk=0"):
        summed_token_loss(model, batch, chunk=0)
    with pytest.raises(ValueError, match="liger runs on CUDA only"):
        summed_token_loss(model, batch, impl="liger")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_liger_fused_loss_equals_the_full_computation():
    pytest.importorskip("liger_kernel")
    model = adapted_model("lora", "tiny").cuda()
    batch = {k: v.cuda() for k, v in collate_rows([build_row(random_docs())], pad_id=0).items()}
    full, _, full_grads = loss_and_grads(model, batch, impl="full")
    fused, _, grads = loss_and_grads(model, batch, impl="liger")
    torch.testing.assert_close(fused, full, rtol=1e-5, atol=1e-4)
    for name in grads:
        torch.testing.assert_close(grads[name], full_grads[name], rtol=1e-3, atol=1e-5, msg=name)
