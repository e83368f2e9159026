"""Export: merged adapters reload as plain models with the adapted logits; adapters and full models as is."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ROOT, compose, small_hotel
from models.adapters import apply_peft
from models.config import ModelConfig, PeftConfig
from models.export import export_checkpoint
from models.loading import load_model, load_tokenizer
from trainer.checkpoint import save_checkpoint
from trainer.loop import Trainer

IDS = torch.tensor([[1, 20, 30, 40, 2, 500, 7000, 12, 9, 4]])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`trained(method)`: (adapted model, its final/ checkpoint) of a 2-step run, trained once per module."""
    runs: dict[str, tuple[torch.nn.Module, Path]] = {}

    def run(method: str) -> tuple[torch.nn.Module, Path]:
        if method not in runs:
            tmp = tmp_path_factory.mktemp(method)
            overrides = [o for o in small_hotel(tmp) if not o.startswith("data.dev=")]
            trainer = Trainer(compose(*overrides, "data.dev=null", "train.batch_size=1",
                                      f"peft={method}", "train.max_steps=2"))
            trainer.train()
            runs[method] = trainer.model.eval(), tmp / "run" / "final"
        return runs[method]

    return run


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


def reload_adapter(directory: Path, base: torch.nn.Module | None = None) -> torch.nn.Module:
    """`PeftModel.from_pretrained` on the base the adapter names (or the given one)."""
    if base is None:
        config = json.loads((directory / "adapter_config.json").read_text())
        base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    return PeftModel.from_pretrained(base, directory).eval()


def assert_standalone(out: Path, checkpoint: Path) -> torch.nn.Module:
    """A plain model directory (no adapter, no training state, no quantisation) with the tokenizer and its
    chat template; returns the model loaded from it."""
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not names & {"adapter_config.json", "trainer_state.pt"}
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["use_cache"] is True
    template = AutoTokenizer.from_pretrained(out).chat_template
    assert template and template == AutoTokenizer.from_pretrained(checkpoint).chat_template
    return AutoModelForCausalLM.from_pretrained(out).eval()


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_merged_and_adapter_exports_reproduce_the_adapted_logits(method, trained, tmp_path):
    model, final = trained(method)
    expected = logits(model)
    with model.disable_adapter():
        assert (expected - logits(model)).abs().max() > 1e-3  # the trained adapter matters

    export_checkpoint(final, tmp_path / "merged", merge=True)
    merged = assert_standalone(tmp_path / "merged", final)
    assert merged.dtype == torch.float32  # the run's model.dtype
    torch.testing.assert_close(logits(merged), expected, atol=1e-4, rtol=0)

    export_checkpoint(final, tmp_path / "adapter")
    names = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= names
    assert "model.safetensors" not in names and "trainer_state.pt" not in names
    torch.testing.assert_close(logits(reload_adapter(tmp_path / "adapter")), expected, atol=1e-5, rtol=0)
    assert AutoTokenizer.from_pretrained(tmp_path / "adapter").chat_template


def dequantised_base(qlora_model: torch.nn.Module) -> torch.nn.Module:
    """The tiny base in fp32 with every 4-bit weight replaced by its dequantised value: exactly the base
    the QLoRA adapter was trained on, minus the bf16 rounding of its matmuls."""
    base = load_model(ModelConfig()).eval()
    for name, module in qlora_model.get_base_model().named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            base.get_submodule(name.removesuffix(".base_layer")).weight.data.copy_(weight.float())
    return base


def checkpoint_with_model(final: Path, tmp_path: Path, **model: str) -> Path:
    """A copy of the run's `final/` whose run config (config.yaml) has the `model.*` values given."""
    from omegaconf import OmegaConf

    checkpoint = tmp_path / "final"
    shutil.copytree(final, checkpoint)
    run = OmegaConf.load(final.parent / "config.yaml")
    for key, value in model.items():
        run.model[key] = value
    OmegaConf.save(run, checkpoint / "config.yaml")
    return checkpoint


def test_qlora_merges_into_an_unquantised_copy_of_the_base(trained, tmp_path):
    model, final = trained("qlora")
    export_checkpoint(final, tmp_path / "merged", merge=True, dtype="float32")
    merged = logits(assert_standalone(tmp_path / "merged", final))
    # 1. The merge itself is exact: the unquantised base + the adapter, unmerged.
    torch.testing.assert_close(merged, logits(reload_adapter(final)), atol=1e-4, rtol=0)
    # 2. Against what training saw (the dequantised 4-bit base + the adapter) the merged model differs only
    # by the base's 4-bit rounding. Its effect on the logits is measured on the base alone; the adapter is a
    # small correction on top, so the difference with it may exceed that by a margin (50%), not more.
    dequantised = dequantised_base(model)
    rounding = (logits(load_model(ModelConfig()).eval()) - logits(dequantised)).abs().max()
    trained_on = logits(reload_adapter(final, dequantised))
    assert 1e-3 < rounding and (merged - trained_on).abs().max() <= 1.5 * rounding
    # The default dtype of a QLoRA merge is its compute dtype, bf16: the 4-bit base is never written.
    export_checkpoint(final, tmp_path / "merged_bf16", merge=True)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "merged_bf16").dtype == torch.bfloat16


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning", "prefix_tuning"])
def test_prompt_learning_exports_the_adapter_and_refuses_to_merge(method, tmp_path):
    peft_cfg = PeftConfig(method=method)
    model = apply_peft(load_model(ModelConfig()), peft_cfg, ModelConfig())
    checkpoint = save_checkpoint(tmp_path / "final", model, load_tokenizer(ModelConfig()), None)
    with pytest.raises(ValueError, match="cannot fold them in; export it without merge"):
        export_checkpoint(checkpoint, tmp_path / "merged", merge=True)
    assert not (tmp_path / "merged").exists()
    export_checkpoint(checkpoint, tmp_path / "adapter")
    torch.testing.assert_close(logits(reload_adapter(tmp_path / "adapter")), logits(model.eval()), atol=1e-5,
                               rtol=0)


def test_full_fine_tuning_exports_as_is(tmp_path):
    model = apply_peft(load_model(ModelConfig()), PeftConfig(method="none"), ModelConfig())
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)  # differ from the base
    checkpoint = save_checkpoint(tmp_path / "final", model, load_tokenizer(ModelConfig()), {"step": 1})
    export_checkpoint(checkpoint, tmp_path / "out", merge=True)
    torch.testing.assert_close(logits(assert_standalone(tmp_path / "out", checkpoint)), logits(model.eval()),
                               atol=1e-6, rtol=0)


def test_export_entry_point(trained, tmp_path):
    _, final = trained("lora")
    out = tmp_path / "merged"
    run = subprocess.run([sys.executable, "launch/export.py", f"checkpoint={final}", f"output_dir={out}",
                          "merge=true"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "lora adapter merged into" in run.stdout and (out / "model.safetensors").is_file()
    again = subprocess.run([sys.executable, "launch/export.py", f"checkpoint={final}", f"output_dir={out}"],
                           cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.startswith("error: output_dir=") and "not empty" in again.stderr


@pytest.mark.parametrize("family", ["chatml", "qwen2.5", "gemma"])
def test_exported_chat_template_renders_what_training_saw(family, trained, tmp_path):
    """apply_chat_template on the exported tokenizer reproduces the training text of every hotel test dialogue:
    the whole dialogue and each turn's prompt. (`qwen2.5`, `gemma`: the run's config names another family, whose
    template export then writes.)"""
    from data.templates import get_template, hf_messages
    from real_tokenizers import hotel_dialogues

    _, final = trained("lora")
    checkpoint = checkpoint_with_model(final, tmp_path, template=family)
    what = export_checkpoint(checkpoint, tmp_path / "out")
    assert f"chat template: the one training used ({family})" in what
    exported = AutoTokenizer.from_pretrained(tmp_path / "out")
    template = get_template(family)
    for conv in hotel_dialogues(30):
        rendered = exported.apply_chat_template(hf_messages(conv.messages), tools=conv.tools, tokenize=False)
        assert rendered == "".join(p.text for p in template.render(conv.messages, conv.tools))
        for k in (k for k, m in enumerate(conv.messages) if m.role == "assistant"):
            assert exported.apply_chat_template(hf_messages(conv.messages[:k]), tools=conv.tools, tokenize=False,
                                                add_generation_prompt=True) == template.prompt(conv.messages[:k],
                                                                                               conv.tools)


def test_export_says_when_no_chat_template_renders_the_training_format(trained, tmp_path):
    _, final = trained("lora")
    checkpoint = checkpoint_with_model(final, tmp_path, tool_format="custom")
    assert "no chat template renders 'chatml' with tool_format='custom'" in export_checkpoint(checkpoint, tmp_path / "o")


@pytest.mark.parametrize("family", ["chatml", "qwen2.5", "llama3"])
def test_exported_response_template_parses_the_training_calls_back(family, trained, tmp_path):
    """`transformers serve` parses a generated turn with tokenizer_config.json's `response_template`: every call
    and reply of the hotel test dialogues, as training rendered it, parses back to the training turn."""
    from data.conversation import Message, ToolCall
    from data.templates import get_template
    from real_tokenizers import hotel_dialogues

    _, final = trained("lora")
    checkpoint = checkpoint_with_model(final, tmp_path, template=family)
    assert "the response template that parses its calls" in export_checkpoint(checkpoint, tmp_path / "out")
    assert "response_template" in json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    exported = AutoTokenizer.from_pretrained(tmp_path / "out")
    template = get_template(family)
    two_calls = Message("assistant", tool_calls=(ToolCall("search_hotels", {"name": "北京饭店"}),
                                                 ToolCall("search_hotels", {"facilities": ["wifi", "{}; x"]})))
    checked = 0
    for conv in hotel_dialogues(30):
        messages = conv.messages[:1] + [Message("user", "?"), two_calls] + conv.messages[1:]
        for k in (k for k, m in enumerate(messages) if m.role == "assistant"):
            prompt, generated = template.render_turn(messages, conv.tools, k)[:2]  # generated: up to end of turn
            prompt, body = prompt.text, generated.text
            parsed = exported.parse_response(body, prefix=prompt)
            calls = tuple(ToolCall(c["function"]["name"], c["function"]["arguments"])
                          for c in parsed.get("tool_calls", ()))
            assert Message("assistant", parsed.get("content", ""), calls) == template.parse_reply(body)
            assert template.parse_reply(body) == Message("assistant", messages[k].content.strip(),
                                                         messages[k].tool_calls)
            checked += 1
    assert checked > 60
