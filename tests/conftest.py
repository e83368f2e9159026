"""Shared set-up: one TURNPACK_HOME for the whole run (the tiny model is built once, data
caches are reused), and composing the real conf/ the way launch/train.py does."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOTEL = ROOT / "data" / "assets" / "hotel"
TRUTHFULQA = ROOT / "data" / "assets" / "truthfulqa" / "mc_task.json"
os.environ.setdefault("TURNPACK_HOME", tempfile.mkdtemp(prefix="turnpack-test-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def compose(*overrides: str):
    """The run config exactly as Hydra composes it for `launch/train.py overrides...`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from trainer.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


def small_hotel(tmp_path: Path, lines: int = 40) -> list[str]:
    """Overrides for a fast run on the first `lines` hotel dialogues."""
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    for path, split, n in ((train, "train", lines), (dev, "dev", 8)):
        path.write_text("".join((HOTEL / f"{split}.jsonl").read_text(encoding="utf-8").splitlines(True)[:n]),
                        encoding="utf-8")
    return [f"data.train={train}", f"data.dev={dev}", "train.seq_len=512", "train.batch_size=2",
            "train.log_every=1", "train.eval_every=0", "train.save_every=0", "logger.plots=false",
            f"output_dir={tmp_path / 'run'}"]


@pytest.fixture
def hotel_overrides(tmp_path):
    return small_hotel(tmp_path)


def tiny_variant_dir(root: Path, model_type: str, **changes) -> Path:
    """A model directory like the embedded tiny one (shapes, token ids, tokenizer) but of another
    architecture or head (`changes`, e.g. `tie_word_embeddings=False`), with random weights."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from models.tiny import TOKENIZER_ASSETS, TOKENIZER_FILES, tiny_config

    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "bos_token_id", "eos_token_id",
            "pad_token_id", "tie_word_embeddings")
    base = tiny_config()
    config = AutoConfig.for_model(model_type, **{k: getattr(base, k) for k in keys} | changes)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(root)
    for name in TOKENIZER_FILES:
        shutil.copyfile(TOKENIZER_ASSETS / name, root / name)
    return root


@pytest.fixture(scope="session")
def untied_llama_dir(tmp_path_factory) -> Path:
    """The tiny shapes as a Llama-architecture model with an untied output head."""
    return tiny_variant_dir(tmp_path_factory.mktemp("llama-untied"), "llama", tie_word_embeddings=False)


def assert_resume_matches(common: list[str], tmp_path: Path, at_step: int = 4) -> None:
    """After a straight run of `common` (which saved checkpoints/step_<at_step>), resume a copy of that
    checkpoint in a fresh output dir and check the final adapter is bit-identical, and not vacuously so."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from trainer.loop import Trainer

    run, resumed_dir = tmp_path / "run", tmp_path / "resumed"
    step_dir = f"checkpoints/step_{at_step}"
    shutil.copytree(run / step_dir, resumed_dir / step_dir)
    resumed = Trainer(compose(*common, f"output_dir={resumed_dir}", "resume=auto"))
    assert resumed.step == at_step
    resumed.train()
    final_a = load_file(run / "final" / "adapter_model.safetensors")
    final_b = load_file(resumed_dir / "final" / "adapter_model.safetensors")
    assert final_a.keys() == final_b.keys()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    mid = load_file(run / step_dir / "adapter_model.safetensors")
    assert any(not torch.equal(mid[k], final_a[k]) for k in mid)  # the resumed steps changed the weights


def nudge_trainable(model, scale: float):
    """Trainable weights moved off their often no-op init (LoRA's B starts at zero), so every output and
    gradient depends on them. Seed the generator first."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn_like(p))
    return model


def reload_adapter_and_compare(trainer, final: Path, tolerance: float = 1e-5):
    """`PeftModel.from_pretrained` on the base the adapter names reproduces the trained model's logits on a
    training row; returns the reloaded model."""
    import json

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_cfg = json.loads((final / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(adapter_cfg["base_model_name_or_path"])
    reloaded = PeftModel.from_pretrained(base, final).eval()
    batch = trainer.micro_batches(trainer.train_split, [[0]])[0]
    trainer.model.eval()
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    with torch.no_grad():  # no cache, as in training: with one, Gemma 3 (transformers 5.25) ignores packed positions
        expected = trainer.model(**inputs).logits
        got = reloaded(**inputs).logits
    torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)
    return reloaded
