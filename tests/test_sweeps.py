"""Hydra multirun: one named W&B run per job grouped by sweep, failed jobs that do not stop the
sweep, the Optuna sweeper on the tiny model, the Slurm launcher config."""
import json
import math
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, small_hotel
from test_monitoring import records_of, wandb_records


def multirun(tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    """`launch/train.py -m` on 12 dialogues, one step per job, jobs in `<tmp_path>/sweep/<n>`."""
    data = [o for o in small_hotel(tmp_path, lines=12) if not o.startswith("output_dir=")]  # one dir per job
    cmd = [sys.executable, "launch/train.py", "-m", *data, "train.max_steps=1", "train.eval_batches=1",
           f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


@pytest.mark.slow
def test_multirun_2x2_gives_four_runs_named_by_overrides_in_one_group(tmp_path):
    run = multirun(tmp_path, "optim.lr=1e-3,2e-3", "train.seed=1,2", "logger=wandb", "logger.mode=offline")
    assert run.returncode == 0, run.stderr[-3000:]
    headers = [records_of(wandb_records(tmp_path / "sweep" / str(n)), "run")[0] for n in range(4)]
    assert [h["display_name"] for h in headers] == [
        "optim.lr=0.001,train.seed=1", "optim.lr=0.001,train.seed=2",
        "optim.lr=0.002,train.seed=1", "optim.lr=0.002,train.seed=2"]
    assert {h["run_group"] for h in headers} == {f"{tmp_path.name}/sweep"}  # the sweep id
    assert [h["config"]["update"]["optim"]["lr"] for h in headers] == [1e-3, 1e-3, 2e-3, 2e-3]
    assert all((tmp_path / "sweep" / str(n) / "final").is_dir() for n in range(4))


@pytest.mark.slow
def test_failed_job_is_reported_and_recorded_and_the_sweep_goes_on(tmp_path):
    good = tmp_path / "train.jsonl"
    missing = tmp_path / "missing.jsonl"
    run = multirun(tmp_path, f"data.train={missing},{good}")
    assert run.returncode == 0, run.stderr[-3000:]
    failed = (tmp_path / "sweep" / "0" / "FAILED").read_text()
    assert "job #0 (" in failed and f"data.train={missing}" in failed and "file not found" in failed
    assert "Traceback" not in failed  # an input error is one line
    assert "error: job #0 (" in run.stderr
    assert (tmp_path / "sweep" / "1" / "final").is_dir() and not (tmp_path / "sweep" / "1" / "FAILED").exists()


@pytest.mark.slow
def test_optuna_sweeper_searches_three_trials_on_the_configured_objective(tmp_path):
    # The shipped example, maximising a metric other than the default eval/loss: the trials return
    # `sweep.objective`, and `sweep.direction` reaches Optuna through the sweeper config.
    run = multirun(tmp_path, "hydra/sweeper=lora_optuna", "hydra.sweeper.n_trials=3",
                   "sweep.objective=eval/perplexity", "sweep.direction=maximize")
    assert run.returncode == 0, run.stderr[-3000:]
    result = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert set(result["best_params"]) == {"optim.lr", "peft.r", "sched.warmup_ratio"}
    values = [json.loads((tmp_path / "sweep" / str(n) / "summary.json").read_text())["eval/perplexity"]
              for n in range(3)]
    assert not (tmp_path / "sweep" / "3").exists()
    assert math.isclose(result["best_value"], max(values))


def test_slurm_launcher_composes_one_task_per_gpu():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from trainer.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4"],
                      return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert cfg.hydra.launcher.tasks_per_node == 4 and launcher["nodes"] == 1
