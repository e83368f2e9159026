"""Every PEFT method: parameter counts, document isolation in a batch, gradient checkpointing, exact resume."""
import shutil
import warnings

import bitsandbytes as bnb
import pytest
import torch

from conftest import compose, nudge_trainable, small_hotel
from data.conversation import Message
from data.encoding import encode_messages
from data.packing import build_row, collate_rows
from data.templates import get_template
from eval.loss import summed_token_loss
from models.adapters import PEFT_METHODS, apply_peft, count_parameters, quantization_config
from models.config import ModelConfig, PeftConfig
from models.loading import load_model, load_tokenizer
from trainer.checkpoint import ENCODER_FILE
from trainer.loop import Trainer

ADAPTERS = [m for m in PEFT_METHODS if m != "none"]
DIALOGUES = [
    [Message("user", "你好，有没有评分4.5以上的酒店？"), Message("assistant", "有的，北京丽晶酒店评分4.6。")],
    [Message("user", "电话多少？"), Message("assistant", "010-85221888。"), Message("user", "谢谢"),
     Message("assistant", "不客气。")],
    [Message("system", "你是酒店助手。"), Message("user", "推荐一家经济型酒店"), Message("assistant", "如家酒店。")],
]


def adapted(method: str, **fields) -> torch.nn.Module:
    """The tiny model with `method` applied, trainable weights nudged off their (often no-op) init."""
    peft_cfg = PeftConfig(method=method, **fields)
    model = apply_peft(load_model(ModelConfig(), quantization=quantization_config(peft_cfg)), peft_cfg, ModelConfig())
    torch.manual_seed(0)
    return nudge_trainable(model, 0.05).eval()


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(ModelConfig())


@pytest.fixture(scope="module")
def docs(tok):
    template = get_template("chatml")
    return [(e.input_ids, e.trained) for e in (encode_messages(d, (), template, tok, ["assistant"]) for d in DIALOGUES)]


def test_every_method_composes_and_counts_its_parameters():
    """One `peft=<name>` override per method; 4-bit weights count as the parameters they hold."""
    base_total = count_parameters(load_model(ModelConfig()))[1]
    counts = {}
    for name in PEFT_METHODS:
        cfg = compose(f"peft={name}")
        assert cfg.peft.method == name
        model = apply_peft(load_model(cfg.model, quantization=quantization_config(cfg.peft)), cfg.peft, cfg.model)
        counts[name] = count_parameters(model)
        assert counts[name][0] > 0 and counts[name][1] >= base_total
    assert counts["none"] == (base_total, base_total)
    assert counts["qlora"] == counts["lora"]  # same adapter; the packed 4-bit base counts in full
    hidden, layers, kv = 256, 4, 128  # kv: 2 key/value heads × 64
    assert counts["prompt_tuning"][0] == 20 * hidden
    assert counts["p_tuning"][0] == 20 * hidden + 3 * (hidden * hidden + hidden)  # + the encoder's 3-layer MLP
    assert counts["prefix_tuning"][0] == 20 * layers * 2 * kv  # a key and a value per layer
    assert counts["ia3"][0] == layers * (2 * kv + 688)  # k, v outputs and down_proj's input
    assert counts["dora"][0] == counts["lora"][0] + layers * (hidden + kv)  # + magnitude of q, v outputs


def test_qlora_base_is_4bit_nf4_with_double_quantisation():
    model = adapted("qlora")
    layer = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(layer, bnb.nn.Linear4bit)
    state = layer.weight.quant_state
    assert state.quant_type == "nf4" and state.nested and layer.compute_dtype == torch.bfloat16


def mean_loss(model, batch: dict) -> torch.Tensor:
    """A document's loss: mean over its trained tokens, through the loop's own `summed_token_loss`."""
    loss, count = summed_token_loss(model, batch)
    return loss / count


def per_document_losses(model, batch: dict, owner: torch.Tensor, n: int) -> torch.Tensor:
    """Each document's loss inside `batch` (`owner`: document index per token): the others' labels masked out."""
    return torch.stack([mean_loss(model, batch | {"labels": batch["labels"].masked_fill(owner != doc, -100)})
                        for doc in range(n)])


@pytest.mark.parametrize("method", ADAPTERS)
def test_each_document_loss_in_a_batch_equals_its_loss_alone(method, tok, docs):
    """Packing methods: the documents share one row; the others: one per row, right-padded, masked.

    QLoRA computes in fp32 here so that the check can be 1e-5 like the rest."""
    model = adapted(method, **({"compute_dtype": "float32"} if method == "qlora" else {}))
    packs = PEFT_METHODS[method].packs
    pad = tok.pad_token_id
    if packs:
        batch = collate_rows([build_row(docs)], pad)
        owner = (batch["position_ids"] == 0).cumsum(1) - 1  # document index of each token
    else:
        batch = collate_rows([build_row([d]) for d in docs], pad, attention_mask=True)
        assert batch.keys() == {"input_ids", "labels", "attention_mask"}
        assert (batch["attention_mask"].sum(1) == torch.tensor([len(d[0]) for d in docs])).all()
        owner = torch.arange(len(docs))[:, None].expand_as(batch["labels"])
    with torch.no_grad():
        in_batch = per_document_losses(model, batch, owner, len(docs))
        alone = torch.stack([mean_loss(model, collate_rows([build_row([d])], pad, not packs)) for d in docs])
        with model.disable_adapter():
            base = torch.stack([mean_loss(model, collate_rows([build_row([d])], pad, not packs)) for d in docs])
    torch.testing.assert_close(in_batch, alone, atol=1e-5, rtol=0)
    assert (alone - base).abs().min() > 1e-4  # the adapter is in play: the equality is not the base model's
    if not packs:  # why these methods are not packed: in one row, the documents would see each other
        row = collate_rows([build_row(docs)], pad)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft: position ids are not supported with virtual tokens
            leaked = per_document_losses(model, row, (row["position_ids"] == 0).cumsum(1) - 1, len(docs))
        assert (leaked - alone)[1:].abs().min() > 1e-4


def test_an_attention_mask_is_refused_for_packed_rows():
    with pytest.raises(ValueError, match="several documents"):
        collate_rows([build_row([([1, 2, 3], [0, 1, 1]), ([4, 5], [0, 1])])], pad_id=0, attention_mask=True)


def test_prefix_tuning_with_grad_ckpt_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"peft=prefix_tuning cannot be combined with train\.grad_ckpt=true"):
        Trainer(compose(*small_hotel(tmp_path), "peft=prefix_tuning", "train.grad_ckpt=true"))
    assert not (tmp_path / "run").exists()


def trainable(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", list(PEFT_METHODS))
def test_two_steps_with_grad_ckpt_then_exact_resume(method, tmp_path, capsys):
    """Gradient checkpointing wherever the method allows it; 2 steps straight == 1 step + resume + 1 step."""
    grad_ckpt = PEFT_METHODS[method].grad_ckpt
    common = [o for o in small_hotel(tmp_path) if not o.startswith("data.dev=")] + [
        "data.dev=null", "train.batch_size=1", f"peft={method}", f"train.grad_ckpt={grad_ckpt}",
        "train.max_steps=2", "train.save_every=1"]
    straight = Trainer(compose(*common))
    assert any(getattr(m, "gradient_checkpointing", False) for m in straight.model.modules()) == grad_ckpt
    before = trainable(straight)
    straight.train()
    after = trainable(straight)
    assert all(bool(v.isfinite().all()) for v in after.values())
    assert any(not torch.equal(before[n], after[n]) for n in before)
    if not PEFT_METHODS[method].packs:
        assert f"peft={method}: virtual tokens are per row, so dialogues are not packed" in capsys.readouterr().out
        assert len(straight.train_split) == straight.train_split.stats.documents  # one dialogue per row
        assert "attention_mask" in straight.micro_batches(straight.train_split, [[0]])[0]
        assert (tmp_path / "run" / "checkpoints" / "step_1" / ENCODER_FILE).is_file()

    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "run" / "checkpoints" / "step_1", resumed_dir / "checkpoints" / "step_1")
    resumed = Trainer(compose(*common, f"output_dir={resumed_dir}", "resume=auto"))
    assert resumed.step == 1
    resumed.train()
    final = trainable(resumed)
    assert final.keys() == after.keys() and all(torch.equal(after[n], final[n]) for n in after)
