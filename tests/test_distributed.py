"""DDP, DeepSpeed ZeRO 1/2/3 and FSDP2 on CPU (gloo), two processes each, against one process on the
same global batch; resume (FSDP's also on another number of processes); a simulated two-node job; a
killed rank, and one that torchrun's --max-restarts survives. Each run is a real torchrun job."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
from conftest import ROOT, compose, small_hotel
from safetensors.torch import load_file

from models.tiny import materialize_tiny
from trainer.distributed import free_port
from trainer.faults import FAULT_INJECT_ENV
from trainer.loop import Trainer

pytestmark = pytest.mark.slow

STEPS = 4
# LoRA without dropout, so one process and two draw no random numbers that could differ.
COMMON = ["peft.dropout=0", f"train.max_steps={STEPS}", "train.save_every=2", "train.grad_accum=2",
          "sched.warmup_steps=1", "train.log_every=1"]
ENGINES = ["ddp", "zero1", "zero2", "zero3", "fsdp", "fsdp_grad_op"]
ADAPTER = "adapter_model.safetensors"


def torchrun(*args: str, nnodes: int = 1, nproc: int = 2, rdzv: str | None = None, restarts: int = 0,
             cwd: Path = ROOT, **popen) -> subprocess.Popen:
    """A torchrun agent (one "node") running `args`; it restarts a failed group `restarts` times."""
    endpoint = rdzv or f"127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc_per_node", str(nproc),
           "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", "test", "--max-restarts",
           str(restarts), *args]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **popen)


def finish(proc: subprocess.Popen, timeout: float = 400) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.fixture(scope="module")
def hotel(tmp_path_factory) -> list[str]:
    materialize_tiny()  # once, before several processes would race to build it
    data = tmp_path_factory.mktemp("data")
    overrides = small_hotel(data, lines=24)[:-1]
    # 7 dev rows: with 2 ranks × batch 1 one rank has a group fewer (ZeRO-3 pads it to stay in step).
    dev = data / "dev.jsonl"
    dev.write_text("".join(dev.read_text(encoding="utf-8").splitlines(keepends=True)[:7]), encoding="utf-8")
    return overrides


@pytest.fixture(scope="module")
def reference(hotel, tmp_path_factory) -> tuple[dict[str, torch.Tensor], Path]:
    """One process, batch 2 × accumulation 2: the same 4 rows per step as 2 ranks × batch 1 × 2."""
    out = tmp_path_factory.mktemp("single")
    trainer = Trainer(compose(*hotel, *COMMON, "train.batch_size=2", f"output_dir={out}"))
    trainer.train()
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}, out


@pytest.fixture(scope="module")
def two_rank_runs(hotel, tmp_path_factory) -> Callable[..., Path]:
    """Each engine's run on `nproc` processes (2 by default; kept for the resume tests), made on first
    use; the global batch is the reference's 4 rows per step whatever `nproc`."""
    runs: dict[tuple[str, int], Path] = {}

    def run(engine: str, nproc: int = 2) -> Path:
        if (engine, nproc) not in runs:
            out = tmp_path_factory.mktemp(f"{engine}_{nproc}")
            finish(torchrun("tests/dist_worker.py", str(out / "dump"), *hotel, *COMMON, f"dist={engine}",
                            f"train.batch_size={2 // nproc}", f"output_dir={out / 'run'}", nproc=nproc))
            runs[engine, nproc] = out
        return runs[engine, nproc]

    return run


@pytest.mark.parametrize("engine", ENGINES)
def test_two_ranks_equal_one_process(engine, reference, two_rank_runs):
    """Same weights on both ranks, equal to one process on the same global batch; and `final/`
    holds them as standard safetensors (under ZeRO-3 gathered from the shards)."""
    expected, single = reference
    out = two_rank_runs(engine)
    rank0, rank1 = load_file(out / "dump" / "rank0.safetensors"), load_file(out / "dump" / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() == expected.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert any(rank0[k].abs().sum() > 0 for k in rank0 if "lora_B" in k)  # trained away from B = 0
    for k in expected:
        torch.testing.assert_close(rank0[k], expected[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    final = load_file(out / "run" / "final" / "adapter_model.safetensors")
    assert len(final) == len(rank0)
    assert all(v.numel() > 0 for v in final.values())
    # Adam hides a constant gradient scale; the logged loss and grad norm would show a wrong one.
    assert json.loads((out / "run" / "summary.json").read_text())["train/global_batch_rows"] == 1 * 2 * 2
    logged, alone = train_metrics(out / "run"), train_metrics(single)
    assert [m["step"] for m in logged] == list(range(1, STEPS + 1))
    final_eval = [json.loads((run / "summary.json").read_text())["eval/loss"] for run in (out / "run", single)]
    assert final_eval[0] == pytest.approx(final_eval[1], rel=1e-5)  # every dev token once, padding adds none
    for key in ("train/loss", "train/grad_norm"):
        torch.testing.assert_close(torch.tensor([m[key] for m in logged]), torch.tensor([m[key] for m in alone]),
                                   rtol=1e-4, atol=0)


def train_metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [m for m in map(json.loads, lines) if "train/loss" in m]


@pytest.mark.parametrize("engine", ["zero3", "fsdp"])
def test_sharded_adapter_loads_with_peft(engine, two_rank_runs):
    """final/ holds the whole adapter, every rank's slice (FSDP shards dim 0: rank 1 holds the second
    half of each lora_B), not rank 0's alone as in accelerate's FSDP2 bug (#4206)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    final = two_rank_runs(engine) / "run" / "final"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(materialize_tiny()), final)
    gathered = load_file(two_rank_runs(engine) / "dump" / "rank0.safetensors")
    loaded = dict(model.named_parameters())
    assert loaded.keys() >= gathered.keys()
    assert all(torch.equal(loaded[k], v) for k, v in gathered.items())
    lora_b = [v for k, v in gathered.items() if "lora_B" in k]
    assert lora_b and all(v[v.shape[0] // 2:].abs().sum() > 0 for v in lora_b)


def test_fsdp_optimizer_steps_the_sharded_parameters(two_rank_runs):
    """Built after `fully_shard`: an optimizer built before it holds the replaced tensors and trains
    nothing, silently."""
    facts = json.loads((two_rank_runs("fsdp") / "dump" / "optimizer_params.json").read_text())
    assert facts == {"all_sharded_model_params": True, "count": facts["trainable"], "trainable": 16}


def test_zero3_full_finetune_gathers_the_whole_model(hotel, tmp_path):
    """Full fine-tuning under ZeRO-3: `final/` holds the consolidated model.safetensors that
    `from_pretrained` loads, equal to one process's result on the same global batch."""
    from transformers import AutoModelForCausalLM

    common = [*hotel, "peft=none", "train.max_steps=2", "train.grad_accum=2", "sched.warmup_steps=1"]
    alone = Trainer(compose(*common, "train.batch_size=2", f"output_dir={tmp_path / 'single'}"))
    alone.train()
    finish(torchrun("launch/train.py", *common, "dist=zero3", "train.batch_size=1", f"output_dir={tmp_path / 'zero3'}"))
    gathered = AutoModelForCausalLM.from_pretrained(tmp_path / "zero3" / "final").state_dict()
    expected = alone.model.state_dict()
    assert gathered.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(gathered[key], value, rtol=1e-4, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")
    assert any(not torch.equal(expected[k], v) for k, v in AutoModelForCausalLM.from_pretrained(
        materialize_tiny()).state_dict().items())  # training moved the weights


def resume_copy(run: Path, tmp_path: Path, step: int = 2) -> Path:
    target = tmp_path / "resumed"
    shutil.copytree(run / "checkpoints" / f"step_{step}", target / "checkpoints" / f"step_{step}")
    return target


@pytest.mark.parametrize("engine", ["ddp", "zero3"])
def test_resume_same_world_size(engine, hotel, two_rank_runs, tmp_path):
    out = two_rank_runs(engine)
    resumed = resume_copy(out / "run", tmp_path)
    log = finish(torchrun("launch/train.py", *hotel, *COMMON, f"dist={engine}", "train.batch_size=1",
                          f"output_dir={resumed}", "resume=auto"))
    assert "resumed from" in log and "at step 2" in log
    straight = load_file(out / "run" / "final" / "adapter_model.safetensors")
    again = load_file(resumed / "final" / "adapter_model.safetensors")
    assert straight.keys() == again.keys()
    assert all(torch.equal(straight[k], again[k]) for k in straight)


def test_ddp_resumes_with_one_process(hotel, reference, two_rank_runs, tmp_path):
    """DDP's state is the same on every rank, so one process can take over two's run."""
    resumed = resume_copy(two_rank_runs("ddp") / "run", tmp_path)
    trainer = Trainer(compose(*hotel, *COMMON, "train.batch_size=2", f"output_dir={resumed}", "resume=auto"))
    assert trainer.step == 2
    trainer.train()
    expected, _ = reference
    final = load_file(resumed / "final" / "adapter_model.safetensors")
    for name, value in expected.items():
        key = name.replace(".default", "")
        torch.testing.assert_close(final[key], value, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("engine,written_by,resumed_by", [("fsdp", 2, 1), ("fsdp_grad_op", 1, 2)])
def test_fsdp_resumes_on_another_world_size(engine, written_by, resumed_by, hotel, reference, two_rank_runs,
                                            tmp_path):
    """DCP reshards on load: the weights and optimizer state the new processes hold equal the saved ones
    bit for bit, and the run finishes as one process did on the same global batch."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    written = two_rank_runs(engine, nproc=written_by) / "run"
    resumed = resume_copy(written, tmp_path)
    log = finish(torchrun("tests/dist_worker.py", str(tmp_path / "dump"), *hotel, *COMMON, f"dist={engine}",
                          f"train.batch_size={2 // resumed_by}", f"output_dir={resumed}", "resume=auto",
                          nproc=resumed_by))
    assert "at step 2" in log
    dcp_to_torch_save(written / "checkpoints" / "step_2" / "dcp", tmp_path / "saved.pt")
    saved = torch.load(tmp_path / "saved.pt", weights_only=True)
    loaded = torch.load(tmp_path / "dump" / "start_state.pt", weights_only=True)
    assert len(saved["model"]) == 16 and "lm_head" not in " ".join(saved["model"])  # trainable only
    assert all(torch.equal(saved["model"][k], loaded["model"][k]) for k in saved["model"])
    moments = [(k, n) for k, state in saved["optimizer"]["state"].items() for n in state]
    assert len(moments) == 3 * 16  # step, exp_avg, exp_avg_sq
    assert all(torch.equal(saved["optimizer"]["state"][k][n], loaded["optimizer"]["state"][k][n]) for k, n in moments)
    expected, _ = reference
    final = load_file(resumed / "final" / "adapter_model.safetensors")
    for name, value in expected.items():
        torch.testing.assert_close(final[name.replace(".default", "")], value, rtol=1e-4, atol=1e-5)


def test_resume_auto_skips_a_truncated_dcp_shard(two_rank_runs, tmp_path):
    from trainer import checkpoint

    run = two_rank_runs("fsdp") / "run"
    for step in (2, 4):
        shutil.copytree(run / "checkpoints" / f"step_{step}", tmp_path / "checkpoints" / f"step_{step}")
    shard = tmp_path / "checkpoints" / "step_4" / "dcp" / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-100])
    warnings: list[str] = []
    found = checkpoint.latest_checkpoint(tmp_path, warnings.append)
    assert found is not None and found[0] == tmp_path / "checkpoints" / "step_2"
    assert len(warnings) == 1 and f"{shard}: truncated DCP shard" in warnings[0]


def test_resume_with_another_engine_is_refused_before_the_model_loads(hotel, two_rank_runs, tmp_path,
                                                                     monkeypatch):
    """DCP shards cannot fill a torch optimizer's whole state: say which engine wrote the checkpoint."""
    resumed = resume_copy(two_rank_runs("fsdp") / "run", tmp_path)
    monkeypatch.setattr("trainer.loop.load_model", lambda *a, **k: pytest.fail("the model loaded first"))
    with pytest.raises(ValueError, match="written with dist.engine=fsdp, resumed with dist.engine=torch"):
        Trainer(compose(*hotel, *COMMON, "train.batch_size=2", f"output_dir={resumed}", "resume=auto"))


@pytest.mark.parametrize("fault", ["raise@step=3,rank=1", "kill_in_save@step=4,rank=1"])
def test_fsdp_group_restarted_by_torchrun_resumes_and_finishes(fault, hotel, two_rank_runs, tmp_path, monkeypatch):
    """A rank that raises, or is SIGKILLed while the DCP shards of a checkpoint are being written:
    torchrun (--max-restarts 1) restarts the group, resume=auto takes the last complete checkpoint
    (an unfinished write is skipped) and the run ends with the uninterrupted run's weights."""
    straight = two_rank_runs("fsdp") / "run" / "final" / ADAPTER  # made (if not yet) before the fault is set
    monkeypatch.setenv(FAULT_INJECT_ENV, fault)  # fires in torchrun's first attempt only (trainer/faults.py)
    out = tmp_path / "run"
    log = finish(torchrun("launch/train.py", *hotel, *COMMON, "dist=fsdp", "train.batch_size=1", f"output_dir={out}",
                          "resume=auto", f"hydra.run.dir={tmp_path / 'hydra'}", restarts=1))
    assert f"resumed from {out / 'checkpoints' / 'step_2'} at step 2" in log, log[-4000:]
    if fault.startswith("kill"):
        assert "step_4.tmp: an unfinished checkpoint write (removed)" in log
    expected, again = load_file(straight), load_file(out / "final" / ADAPTER)
    assert expected.keys() == again.keys()
    assert all(torch.equal(expected[k], again[k]) for k in expected)


def test_zero_resume_needs_the_same_world_size(hotel, two_rank_runs, tmp_path):
    resumed = resume_copy(two_rank_runs("zero3") / "run", tmp_path)
    proc = subprocess.run([sys.executable, "launch/train.py", *hotel, *COMMON, "dist=zero3", "train.batch_size=4",
                           f"output_dir={resumed}", "resume=auto"], cwd=ROOT, capture_output=True, text=True,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "written by 2 processes, resumed by 1" in proc.stderr


def test_two_nodes_run_a_multirun_in_one_sweep_dir(hotel, tmp_path):
    """Two torchrun agents (one process each) meet at a c10d rendezvous on 127.0.0.1 and run a
    two-job multirun. The second node starts seconds later, yet both use rank 0's sweep directory,
    only rank 0 writes each job's `.hydra/`, and both jobs train and save over one process group."""
    endpoint = f"127.0.0.1:{free_port()}"
    args = ["launch/train.py", "-m", *hotel, "dist=ddp", "train.max_steps=2", "optim.lr=1e-3,2e-3",
            f"hydra.sweep.dir={tmp_path}/multirun/" + "${run_stamp:}"]
    first = torchrun(*args, nnodes=2, nproc=1, rdzv=endpoint)
    time.sleep(2.5)
    second = torchrun(*args, nnodes=2, nproc=1, rdzv=endpoint)
    finish(second)
    finish(first)
    sweeps = [p for p in (tmp_path / "multirun").glob("*/*") if p.is_dir()]
    assert len(sweeps) == 1, sweeps
    for job, lr in (("0", "0.001"), ("1", "0.002")):
        assert (sweeps[0] / job / "final" / "adapter_model.safetensors").is_file()
        assert f"lr: {lr}" in (sweeps[0] / job / ".hydra" / "config.yaml").read_text()
        metrics = (sweeps[0] / job / "metrics.jsonl").read_text()
        assert '"step": 2' in metrics


def child_pids(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def test_killed_rank_fails_the_job_within_the_timeout(hotel, tmp_path):
    """Node 2 dies mid-training: node 1 must exit with an error, not hang (dist.timeout_minutes)."""
    endpoint = f"127.0.0.1:{free_port()}"
    run = tmp_path / "run"
    args = ["launch/train.py", *hotel, "dist=ddp", "train.max_steps=100000", "train.log_every=1",
            "dist.timeout_minutes=0.5", f"output_dir={run}"]
    first = torchrun(*args, nnodes=2, nproc=1, rdzv=endpoint)
    second = torchrun(*args, nnodes=2, nproc=1, rdzv=endpoint)
    deadline = time.monotonic() + 300
    while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().count("\n") >= 2):
        assert time.monotonic() < deadline and first.poll() is None, "training never started"
        time.sleep(0.5)
    # The node dies: its agent and its worker (which torchrun starts in a session of its own).
    for pid in [*child_pids(second.pid), second.pid]:
        os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        first.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        for pid in [*child_pids(first.pid), first.pid]:
            os.kill(pid, signal.SIGKILL)
        pytest.fail("the surviving node hung after its peer died")
    assert first.returncode != 0
    assert time.monotonic() - killed_at < 0.5 * 60 + 60  # the timeout, plus start-up slack


def test_submitit_launcher_tasks_train_as_ranks(hotel, tmp_path):
    """`hydra/launcher=slurm`'s path without Slurm: submitit's local executor starts the job as two
    tasks, which take torchrun's variables from submitit's and train as two DDP ranks."""
    proc = subprocess.run([sys.executable, "launch/train.py", "-m", "hydra/launcher=submitit_local",
                           "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=10", *hotel,
                           "train.max_steps=2", f"hydra.sweep.dir={tmp_path}/sweep"],
                          cwd=ROOT, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = tmp_path / "sweep" / "0"
    assert not (job / "FAILED").exists(), (job / "FAILED").read_text()
    summary = json.loads((job / "summary.json").read_text())
    assert summary["train/steps"] == 2
    assert summary["train/global_batch_rows"] == 2 * 1 * 2  # batch 2 × accumulation 1 × world 2
    assert (job / "final" / "adapter_model.safetensors").is_file()
