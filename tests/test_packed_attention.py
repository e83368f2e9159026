"""A packed document's loss equals its loss alone: packed documents never attend to each other, with
every attention implementation, for the Qwen2 (tiny), Llama and Gemma 3 (sliding-window) architectures."""
import pytest
import torch
import torch.nn.functional as F

from conftest import nudge_trainable, tiny_variant_dir
from data.conversation import Message
from data.encoding import encode_messages
from data.packing import IGNORE_INDEX, build_row, collate_rows
from data.templates import get_template
from models.attention import DOCUMENT_SDPA
from models.config import ModelConfig
from models.loading import load_model, load_tokenizer

DIALOGUES = [
    [Message("user", "你好，有没有评分4.5以上的酒店？"), Message("assistant", "有的，北京丽晶酒店评分4.6。")],
    [Message("user", "电话多少？"), Message("assistant", "010-85221888。"), Message("user", "谢谢"),
     Message("assistant", "不客气。")],
    [Message("system", "你是酒店助手。"), Message("user", "推荐一家经济型酒店"), Message("assistant", "如家酒店。")],
]


def per_token_losses(model, batch):
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    losses = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), reduction="none",
                             ignore_index=IGNORE_INDEX)
    return losses[batch["labels"].flatten() != IGNORE_INDEX]


def hotel_docs(tokenizer) -> list[tuple[list[int], list[int]]]:
    template = get_template("chatml")
    return [(d.input_ids, d.trained) for d in (encode_messages(m, (), template, tokenizer, ["assistant"])
                                               for m in DIALOGUES)]


def packed_alone_and_leaked(model, tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token losses of DIALOGUES packed in one row, each alone, and packed with positions running
    straight through the row (documents then see each other: what the isolation check must catch)."""
    docs = hotel_docs(tokenizer)
    with torch.no_grad():
        packed = per_token_losses(model, collate_rows([build_row(docs)], tokenizer.pad_token_id))
        alone = torch.cat([per_token_losses(model, collate_rows([build_row([d])], tokenizer.pad_token_id))
                           for d in docs])
        leaky = collate_rows([build_row(docs)], tokenizer.pad_token_id)
        leaky["position_ids"] = torch.arange(leaky["input_ids"].shape[1])[None]
        leaked = per_token_losses(model, leaky)
    return packed, alone, leaked


WINDOW = 16  # the small Gemma 3's sliding window: every hotel document below is longer


def gemma3_dir(root, window: int):
    """The tiny shapes in the Gemma 3 architecture with its layer pattern (five sliding-window layers, then a
    full-attention one; one KV head, its own RoPE per layer type) and a sliding window of `window` tokens."""
    return tiny_variant_dir(root, "gemma3_text", num_hidden_layers=6, num_key_value_heads=1, head_dim=64,
                            sliding_window=window, layer_types=["sliding_attention"] * 5 + ["full_attention"])


@pytest.fixture(scope="session")
def gemma3_window_dir(tmp_path_factory):
    return gemma3_dir(tmp_path_factory.mktemp("gemma3"), WINDOW)


@pytest.fixture(params=["qwen2", "llama", "gemma3"])
def model_path(request):
    fixture = {"llama": "untied_llama_dir", "gemma3": "gemma3_window_dir"}.get(request.param)
    return str(request.getfixturevalue(fixture)) if fixture else "tiny"


@pytest.mark.parametrize("attn", ["sdpa", "eager", DOCUMENT_SDPA, "flex_attention"])
def test_packed_loss_equals_unpacked(attn, model_path):
    cfg = ModelConfig(path=model_path, attn_implementation=attn)
    packed, alone, leaked = packed_alone_and_leaked(load_model(cfg).eval(), load_tokenizer(cfg))
    assert packed.shape == alone.shape and len(alone) > 20
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)
    assert (leaked - alone).abs().max() > 1e-3  # the check above can fail


def test_document_sdpa_gradients_equal_sdpa_with_its_block_mask(model_path):
    """Training through the per-document kernel: the loss and every gradient are SDPA's with the mask."""
    from eval.loss import summed_token_loss
    from models.adapters import apply_peft
    from models.config import PeftConfig

    tok = load_tokenizer(ModelConfig(path=model_path))
    docs = hotel_docs(tok)
    batch = collate_rows([build_row(docs[:2]), build_row(docs[2:])], tok.pad_token_id)  # 2 rows, padded
    results = []
    for attn in ("sdpa", DOCUMENT_SDPA):
        cfg = ModelConfig(path=model_path, attn_implementation=attn)
        torch.manual_seed(0)  # the same adapter init for both
        model = nudge_trainable(apply_peft(load_model(cfg), PeftConfig(dropout=0.0), cfg), 0.05)
        loss, _ = summed_token_loss(model, batch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (loss, grads), (doc_loss, doc_grads) = results
    torch.testing.assert_close(doc_loss, loss, rtol=1e-6, atol=1e-5)
    for name in grads:
        torch.testing.assert_close(doc_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_gemma3_documents_cross_its_window_and_the_window_applies(gemma3_window_dir, tmp_path):
    """What makes the Gemma 3 cases above a test of sliding-window packing: every document and the packed row
    are longer than the window, and the same weights with a window longer than the row compute other losses
    (the sliding layers cut attention inside each document)."""
    tokenizer = load_tokenizer(ModelConfig(path=str(gemma3_window_dir)))
    lengths = [len(ids) for ids, _ in hotel_docs(tokenizer)]
    assert min(lengths) > WINDOW and sum(lengths) > 4 * WINDOW
    losses = []
    for path in (gemma3_window_dir, gemma3_dir(tmp_path, 4096)):  # the same seed: the same weights
        packed, alone, _ = packed_alone_and_leaked(load_model(ModelConfig(path=str(path))).eval(), tokenizer)
        torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)
        losses.append(alone)
    assert (losses[0] - losses[1]).abs().max() > 1e-3
