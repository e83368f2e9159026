"""Distributed set-up that needs no second process: the generated DeepSpeed JSON, config errors,
Slurm's variables turned into torchrun's, and the shared run stamp."""
from __future__ import annotations

import json
import os
import re

import pytest
import torch
from conftest import compose

from trainer.config import RUN_STAMP_ENV, run_stamp
from trainer.distributed import slurm_to_torchrun_env
from trainer.engines import deepspeed_config


@pytest.mark.parametrize("dist,stage,offload", [("zero1", 1, ()), ("zero2", 2, ()),
                                                 ("zero2_offload", 2, ("offload_optimizer",)),
                                                 ("zero3", 3, ()),
                                                 ("zero3_offload", 3, ("offload_optimizer", "offload_param"))])
def test_deepspeed_json_follows_the_run_config(dist, stage, offload):
    cfg = compose(f"dist={dist}", "train.batch_size=3", "train.grad_accum=5", "train.grad_clip=0.7")
    ds = deepspeed_config(cfg, world_size=4, autocast_dtype=torch.bfloat16)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (3, 5, 60)
    assert ds["gradient_clipping"] == 0.7 and ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    zero = ds["zero_optimization"]
    assert zero["stage"] == stage
    assert {k for k in ("offload_optimizer", "offload_param") if k in zero} == set(offload)
    assert zero["reduce_bucket_size"] == cfg.dist.bucket_size


def test_deepspeed_json_file_replaces_the_generated_one(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2, "overlap_comm": False},
                                "gradient_accumulation_steps": 2}))
    cfg = compose("dist=zero3", "train.batch_size=2", "train.grad_accum=2", f"dist.deepspeed_config={path}")
    ds = deepspeed_config(cfg, world_size=2, autocast_dtype=None)
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": False}
    assert ds["train_batch_size"] == 8
    path.write_text(json.dumps({"gradient_accumulation_steps": 4}))
    with pytest.raises(ValueError, match="gradient_accumulation_steps=4 disagrees with the run's 2"):
        deepspeed_config(cfg, world_size=2, autocast_dtype=None)
    path.write_text('{"zero_optimization": {\n  "stage": 2,,\n}}')
    with pytest.raises(ValueError, match=r"ds\.json:2: not valid JSON"):
        deepspeed_config(cfg, world_size=2, autocast_dtype=None)


@pytest.mark.parametrize("override,message", [("dist.zero_stage=4", r"dist\.zero_stage=4; allowed .* \[1, 2, 3\]"),
                                              ("dist.offload_params=true", "needs dist.zero_stage=3")])
def test_bad_deepspeed_settings_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        deepspeed_config(compose("dist=zero2", override), world_size=1, autocast_dtype=None)


def test_unknown_engine_is_refused(hotel_overrides):
    from trainer.loop import Trainer

    with pytest.raises(ValueError, match=r"dist\.engine=horovod: unknown; allowed: torch, deepspeed, fsdp"):
        Trainer(compose(*hotel_overrides, "dist.engine=horovod", "train.max_steps=1"))


def test_qlora_under_zero3_is_refused_clearly(hotel_overrides):
    from trainer.loop import Trainer

    with pytest.raises(ValueError, match="ZeRO-3 cannot partition bitsandbytes 4-bit"):
        Trainer(compose(*hotel_overrides, "peft=qlora", "peft.compute_dtype=float32", "dist=zero3",
                        "train.max_steps=1"))


def test_slurm_tasks_become_torchrun_ranks(monkeypatch):
    """What a hydra-submitit-launcher task sees: rank 5 of 8 tasks over two 4-GPU nodes."""
    # A private copy of the environment: what the export writes must not reach later tests.
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k not in
                                        ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")})
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    for key, value in {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "8", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1",
                       "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_PROCID": "5", "SLURM_LOCALID": "1"}.items():
        monkeypatch.setenv(key, value)
    slurm_to_torchrun_env()
    assert {k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR")} == \
        {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "MASTER_ADDR": "gpu07"}
    assert 20000 <= int(os.environ["MASTER_PORT"]) <= 60000


def test_torchrun_ranks_are_left_alone(monkeypatch):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("SLURM_PROCID", "0")
    slurm_to_torchrun_env()
    assert os.environ["RANK"] == "3"


def test_run_stamp_is_the_broadcast_one(monkeypatch):
    monkeypatch.setenv(RUN_STAMP_ENV, "2026-01-02/03-04-05")
    assert run_stamp() == "2026-01-02/03-04-05"
    monkeypatch.delenv(RUN_STAMP_ENV)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d", run_stamp())


def test_generation_eval_under_zero3_is_refused_before_any_work(hotel_overrides):
    from trainer.loop import Trainer

    with pytest.raises(ValueError, match="generation during ZeRO-3 training is not supported"):
        Trainer(compose(*hotel_overrides, "dist=zero3", "train.eval_generate_every=5"))


@pytest.mark.parametrize("overrides,named", [
    (["peft=qlora"], "FSDP cannot shard bitsandbytes 4-bit weights"),
    (["optim=adamw_8bit"], "bitsandbytes optimizers cannot step FSDP's sharded parameters"),
    (["train.precision=fp16"], "use train.precision=bf16"),
    (["peft=prompt_tuning"], "use dist=ddp or peft=lora"),
    (["dist.offload_optimizer=true"], "use dist.offload_params=true"),
    (["train.eval_generate_every=5"], "generation during FSDP training is not supported"),
])
def test_what_fsdp_cannot_shard_is_refused_before_any_work(overrides, named, hotel_overrides, monkeypatch):
    from trainer.loop import Trainer

    monkeypatch.setattr("trainer.loop.load_tokenizer", lambda *a: pytest.fail("work began before the check"))
    with pytest.raises(ValueError, match=f"dist=fsdp_grad_op.*{re.escape(named)}"):
        Trainer(compose(*hotel_overrides, "dist=fsdp_grad_op", *overrides))
