"""Monitoring: honest FLOP counts, secret redaction, and what a `logger=wandb` run leaves behind."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, compose, small_hotel
from trainer.flops import ModelFlops, document_lengths, model_flops, peak_flops
from trainer.loop import Trainer
from trainer.redact import REDACTED, redact, redact_overrides, secret_env_values

WANDB = Path(sys.executable).with_name("wandb")
SECRET = "sk-test-7f3a9c0e5b1d"


def wandb_records(run_dir: Path) -> list[dict]:
    """The records of a run's offline W&B log, read back with W&B's own `wandb leet inspect --json`."""
    [log] = (Path(run_dir) / "wandb").glob("offline-run-*/run-*.wandb")
    out = subprocess.run([str(WANDB), "leet", "inspect", str(log), "--json"], capture_output=True, text=True,
                         check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def records_of(records: list[dict], kind: str) -> list[dict]:
    return [r[kind] for r in records if r["type"] == kind]


# ------------------------------------------------------------------ FLOPs
def test_flops_per_token_follow_the_method():
    m = ModelFlops(matmul_weights=100, trainable_weights=10, layer_weights=60, attention_width=4)
    # forward 2·100·3 + 4·4·6 (one document: 3·4/2 = 6 causal pairs); backward: input grads of every
    # weight, weight grads of the 10 trainable ones, twice the attention
    assert m.training([3]) == (600 + 96) + (660 + 192)
    full = ModelFlops(100, 100, 60, 4)
    assert full.training([3]) - m.training([3]) == 2 * 90 * 3  # frozen weights: no weight-gradient matmul
    ckpt = ModelFlops(100, 10, 60, 4, rerun_share=1.0)
    assert ckpt.training([3]) - m.training([3]) == 2 * 60 * 3 + 96  # decoder layers' forward once more
    # attention over the packed documents' own lengths, not the row's
    assert m.training([2, 2]) < m.training([4])
    assert m.training([2, 2]) - m.training([4]) == 3 * 4 * 4 * (3 + 3 - 10)  # 3 pairs each vs 10, ×3 fwd+bwd


def test_flops_read_off_the_model(hotel_overrides):
    from models.adapters import apply_peft
    from models.loading import load_model

    lora_cfg, full_cfg = compose(*hotel_overrides), compose(*hotel_overrides, "peft=none")
    lora = model_flops(apply_peft(load_model(lora_cfg.model), lora_cfg.peft, lora_cfg.model))
    full = model_flops(apply_peft(load_model(full_cfg.model), full_cfg.peft, full_cfg.model), rerun_every=1)
    assert full.trainable_weights == full.matmul_weights  # every weight (LM head included) gets its gradient
    lora_linears = lora.matmul_weights - full.matmul_weights
    assert lora.trainable_weights == lora_linears > 0  # only the adapters train
    assert 0 < full.layer_weights < full.matmul_weights  # the LM head is outside the recomputed layers
    assert full.attention_width == 4 * 4 * 64  # tiny: 4 layers × 4 heads × 64
    assert document_lengths(torch.tensor([0, 1, 2, 0, 1, 0, 1, 2, 3])) == [3, 2, 4]


def test_peak_flops_known_only_when_configured_or_for_known_gpus():
    cpu = torch.device("cpu")
    assert peak_flops(None, cpu, torch.bfloat16) is None  # no MFU on CPU unless perf.peak_tflops says
    assert peak_flops(2.5, cpu, torch.float32) == 2.5e12


# -------------------------------------------------------------- redaction
def test_redaction_by_key_name_and_by_secret_environment_values():
    secrets = secret_env_values({"HF_TOKEN": SECRET, "TOKENIZERS_PARALLELISM": "false", "MY_API_KEY": "1"})
    assert secrets == [SECRET]  # TOKENIZERS is not TOKEN; a 1-character flag is no credential
    dump = redact({"model": {"hf_token": "abc", "tokenizer": "t", "max_new_tokens": 5, "use_auth_token": True},
                   "logger": {"api_key": "xyz", "apiKey": "xyz", "db_password": None},
                   "data": {"url": f"https://u:{SECRET}@host/x", "files": [SECRET, "b"]}}, secrets)
    assert dump == {"model": {"hf_token": REDACTED, "tokenizer": "t", "max_new_tokens": 5, "use_auth_token": True},
                    "logger": {"api_key": REDACTED, "apiKey": REDACTED, "db_password": None},
                    "data": {"url": f"https://u:{REDACTED}@host/x", "files": [REDACTED, "b"]}}
    assert redact_overrides(["+model.hf_token=abc", f"data.train={SECRET}.jsonl", "optim.lr=1e-3"], secrets) == [
        f"+model.hf_token={REDACTED}", f"data.train={REDACTED}.jsonl", "optim.lr=1e-3"]


def test_logger_config_errors_name_the_key_and_the_allowed_values(hotel_overrides):
    with pytest.raises(ValueError, match=r"logger\.mode=onlin: unknown; allowed: auto, online, offline, disabled"):
        Trainer(compose(*hotel_overrides, "logger=wandb", "logger.mode=onlin"))


# --------------------------------------------------------------- W&B run
@pytest.mark.slow
def test_wandb_run_logs_everything_and_no_secret_anywhere(tmp_path):
    """One offline `logger=wandb` run: config, overrides, parameter counts, per-step metrics, eval,
    summary and a checkpoint artifact reach the W&B log, metrics.jsonl holds the same metrics, plots
    are drawn, and a secret from the environment appears in no file, record or console line."""
    env = os.environ | {"TURNPACK_TEST_API_KEY": SECRET, "WANDB_DATA_DIR": str(tmp_path / "wandb-data")}
    env.pop("WANDB_API_KEY", None)
    run_dir = tmp_path / "run"
    overrides = small_hotel(tmp_path, lines=12) + [
        f"hydra.run.dir={run_dir}", "train.max_steps=2", "logger=wandb", "logger.mode=offline",
        "logger.log_checkpoints=true", "logger.plots=true", "logger.tags=[ci]", "perf.peak_tflops=1",
        "logger.name=${oc.env:TURNPACK_TEST_API_KEY}", "data.system=${oc.env:TURNPACK_TEST_API_KEY}"]
    run = subprocess.run([sys.executable, "launch/train.py", *overrides], cwd=ROOT, env=env, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr[-3000:]

    records = wandb_records(run_dir)
    [header] = records_of(records, "run")
    config = header["config"]["update"]
    assert header["display_name"] == REDACTED and header["tags"] == ["ci"]
    assert config["data"]["system"] == REDACTED and config["optim"]["lr"] == 2e-3 and config["peft"]["method"] == "lora"
    assert config["params"]["trainable"] == 28672 and config["params"]["total"] > 5e6
    assert "logger=wandb" in config["hydra_overrides"]
    history = records_of(records, "history")
    steps = [{k: v for k, v in h["item"].items() if not k.startswith("_")} for h in history]
    train_keys = {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/mfu", "train/tokens_seen"}
    assert all(train_keys <= s.keys() for s in steps) and len(steps) == 2
    assert "eval/loss" in steps[-1] and "train/mem_gb" not in steps[-1]  # CPU: no peak memory metric
    assert 0 < steps[-1]["train/mfu"] < 1
    summary = {k: v for s in records_of(records, "summary") for k, v in s["update"].items()}
    assert summary["train/steps"] == 2 and summary["eval/loss"] == steps[-1]["eval/loss"]
    assert any(r["type"] == "artifact" for r in records)

    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if "train/loss" in e] == [1, 2]
    assert train_keys <= events[0].keys() and events[-1]["eval/loss"] == steps[-1]["eval/loss"]
    assert json.loads((run_dir / "summary.json").read_text())["train/steps"] == 2
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == [
        "grad_norm.png", "loss.png", "lr.png", "tokens_per_s.png"]

    assert "data:" in run.stdout and f"system: '{REDACTED}'" in run.stdout  # the console echo, redacted
    assert SECRET not in run.stdout + run.stderr
    leaks = [p for p in run_dir.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaks
