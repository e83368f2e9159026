"""Fault injection: hard kills at random moments, preemption signals (one process and two DDP
ranks), divergence, corrupt checkpoints, retention, preflight and a failing rank. Every run that
is interrupted and resumed must end bit-identical to the straight run."""
from __future__ import annotations

import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, compose, small_hotel
from safetensors.torch import load_file

from models.tiny import materialize_tiny
from trainer import checkpoint
from trainer.faults import FAULT_INJECT_ENV, REQUEUE_EXIT_CODE, Diverged
from trainer.loop import Trainer

from test_distributed import child_pids, finish, torchrun  # noqa: E402  (after conftest, like the tests)

STEPS = 12
ADAPTER = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def hotel(tmp_path_factory) -> list[str]:
    """A short LoRA run that checkpoints every step (dropout on: resuming must restore the RNG)."""
    materialize_tiny()  # once, before several processes would race to build it
    overrides = small_hotel(tmp_path_factory.mktemp("data"), lines=24)[:-1]
    return [*overrides, "data.dev=null", "train.batch_size=1", f"train.max_steps={STEPS}", "train.save_every=1",
            "peft.dropout=0.1", "sched.warmup_steps=2"]


class ForkServer:
    """tests/fault_runner.py: runs trainings in forked children that a test can kill at any moment."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fault_runner.py")], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=os.environ | {"OMP_NUM_THREADS": "1"})

    def start(self, overrides: list[str], log: Path, **env: str) -> int:
        request = {"overrides": overrides, "log": str(log), "env": env}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        kind, pid = self.proc.stdout.readline().split()
        assert kind == "pid", kind
        return int(pid)

    def wait(self, timeout: float | None = None) -> int | None:
        """The child's exit status, or None if it is still running after `timeout` seconds."""
        if timeout is not None and not select.select([self.proc.stdout], [], [], timeout)[0]:
            return None
        kind, status = self.proc.stdout.readline().split()
        assert kind == "exit", kind
        return int(status)

    def run(self, overrides: list[str], log: Path, **env: str) -> int:
        self.start(overrides, log, **env)
        return self.wait()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server():
    forks = ForkServer()
    yield forks
    forks.close()


@pytest.fixture(scope="module")
def straight(hotel, server, tmp_path_factory) -> Path:
    """The reference: the same run, never interrupted."""
    out = tmp_path_factory.mktemp("straight")
    assert server.run([*hotel, f"output_dir={out}"], out / "log.txt") == 0, (out / "log.txt").read_text()[-3000:]
    return out


def assert_same_final(run: Path, reference: Path, name: str = ADAPTER) -> None:
    got, expected = load_file(run / "final" / name), load_file(reference / "final" / name)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected), "final weights differ from the straight run"


def train_steps(run: Path) -> list[int]:
    return [m["step"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "train/loss" in m]


def wait_for_step(run: Path, step: int, proc: subprocess.Popen | None = None, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ((run / "metrics.jsonl").is_file() and train_steps(run) and train_steps(run)[-1] >= step):
        assert time.monotonic() < deadline and (proc is None or proc.poll() is None), "training never got there"
        time.sleep(0.05)


def kill_at_random_moment(server: ForkServer, pid: int, run: Path, moments: random.Random) -> int | None:
    """Let the run log 0 or 1 more steps, wait a random part of a step more, then SIGKILL it (so the
    moment falls in loading, a step or a checkpoint write, whatever the machine's speed). Returns
    its exit status if it finished first, else None."""
    logged = train_steps(run)[-1] if (run / "metrics.jsonl").is_file() and train_steps(run) else 0
    target = logged + moments.randint(0, 1)
    while not ((run / "metrics.jsonl").is_file() and train_steps(run) and train_steps(run)[-1] >= target):
        if (status := server.wait(timeout=0.02)) is not None:
            return status
    if (status := server.wait(timeout=moments.uniform(0, 0.6))) is not None:
        return status
    os.kill(pid, signal.SIGKILL)
    assert server.wait() == -signal.SIGKILL
    return None


def test_kill_9_at_random_moments_then_resume_is_bit_exact(hotel, server, straight, tmp_path):
    """SIGKILL at 10 random moments (loading, mid-step, mid-checkpoint), resume=auto each time:
    the run finishes with the straight run's weights and never resumes from a broken checkpoint."""
    out, log = tmp_path / "run", tmp_path / "log.txt"
    overrides = [*hotel, f"output_dir={out}", "resume=auto"]
    moments = random.Random(12)
    kills = 0
    while kills < 10:
        status = kill_at_random_moment(server, server.start(overrides, log), out, moments)
        if status is None:
            kills += 1
            continue
        assert status == 0, log.read_text()[-3000:]
        shutil.rmtree(out / "final")  # finished before 10 kills: go again from an older checkpoint
        for _, path in checkpoint.step_dirs(out / "checkpoints")[:4]:
            shutil.rmtree(path)
    assert server.run(overrides, log) == 0, log.read_text()[-3000:]
    assert_same_final(out, straight)
    text = log.read_text()
    assert "resumed from" in text and "Traceback" not in text
    print(f"{kills} kills survived; {text.count('unfinished checkpoint write')} of them mid-checkpoint")


def test_killed_after_the_last_checkpoint_resume_writes_final(hotel, server, straight, tmp_path):
    """What a kill between `step_<max>` and `final/` leaves (and a half-written final staging dir):
    resume=auto writes `final/` and finishes, bit-identical."""
    out = tmp_path / "run"
    shutil.copytree(straight / "checkpoints" / f"step_{STEPS}", out / "checkpoints" / f"step_{STEPS}")
    (out / ".final.tmp").mkdir()
    (out / ".final.tmp" / ADAPTER).write_bytes(b"half")
    assert server.run([*hotel, f"output_dir={out}", "resume=auto"], tmp_path / "log.txt") == 0
    assert_same_final(out, straight)
    assert not (out / ".final.tmp").exists()


def test_sigterm_checkpoints_exits_for_requeue_and_resumes_bit_exact(hotel, server, straight, tmp_path):
    """launch/train.py gets SIGTERM mid-run: it finishes the step, checkpoints it, says so and
    exits with the requeue status; resume=auto then ends where the straight run ended."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "launch/train.py", *hotel, f"output_dir={out}", "resume=auto",
                             f"hydra.run.dir={tmp_path / 'hydra'}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    wait_for_step(out, 2, proc)
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == REQUEUE_EXIT_CODE, log[-3000:]
    step = int(log.split("preempted at step ")[1].split(":")[0])
    assert f"preempted at step {step}: checkpoint {out / 'checkpoints' / f'step_{step}'}" in log
    assert 2 <= step < STEPS and not (out / "final").exists()
    assert checkpoint.load_valid_state(out / "checkpoints" / f"step_{step}")["step"] == step
    assert server.run([*hotel, f"output_dir={out}", "resume=auto"], tmp_path / "log.txt") == 0
    assert f"resumed from {out / 'checkpoints' / f'step_{step}'}" in (tmp_path / "log.txt").read_text()
    assert_same_final(out, straight)


def test_second_ctrl_c_exits_at_once(hotel, server, tmp_path):
    out, log = tmp_path / "run", tmp_path / "log.txt"
    pid = server.start([*hotel, f"output_dir={out}"], log)
    wait_for_step(out, 1)
    os.kill(pid, signal.SIGINT)
    while "SIGINT received" not in log.read_text():  # a signal sent twice before it is handled counts once
        time.sleep(0.01)
    os.kill(pid, signal.SIGINT)
    assert server.wait() == 130, log.read_text()[-3000:]
    assert "KeyboardInterrupt" in log.read_text() and "preempted at step" not in log.read_text()


def test_diverging_run_skips_and_stops_without_writing_bad_weights(hotel, tmp_path):
    """Full fine-tuning at lr=1e12 blows up within a few steps: each non-finite step is skipped
    (weights, optimizer state and schedule untouched) and counted, and after train.max_bad_steps in
    a row the run stops naming the step; every checkpoint holds finite weights, no final/."""
    out = tmp_path / "run"
    trainer = Trainer(compose(*hotel, "peft=none", "optim.lr=1e12", "train.max_bad_steps=2", f"output_dir={out}"))
    with pytest.raises(Diverged, match=r"2 consecutive .*train.max_bad_steps=2") as stopped:
        trainer.train()
    logged = [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "train/loss" in m]
    first_bad = next(m["step"] for m in logged if m["train/skipped_steps"] == 1)
    assert first_bad > 1 and str(stopped.value).startswith(f"step {first_bad + 1}: ")
    assert f"checkpoints/step_{first_bad}" in str(stopped.value)  # the last good one
    assert [m["train/skipped_steps"] for m in logged] == [0] * (first_bad - 1) + [1]
    assert not (out / "final").exists()
    saved = {int(p.name.split("_")[1]): p for _, p in checkpoint.step_dirs(out / "checkpoints")}
    assert sorted(saved) == list(range(1, first_bad + 1))
    weights = {n: load_file(p / "model.safetensors") for n, p in saved.items()}
    assert all(torch.isfinite(t).all() for w in weights.values() for t in w.values())
    before, skipped = weights[first_bad - 1], weights[first_bad]
    assert all(torch.equal(before[k], skipped[k]) for k in before)  # the skipped step changed nothing
    states = [checkpoint.load_state(saved[n]) for n in (first_bad - 1, first_bad)]
    assert states[0]["scheduler"] == states[1]["scheduler"]
    assert states[0]["optimizer"]["state"][0]["step"] == states[1]["optimizer"]["state"][0]["step"]
    assert states[1]["skipped_steps"] == 1


def test_one_non_finite_step_is_skipped_and_training_goes_on(hotel, tmp_path, monkeypatch):
    """A NaN loss at step 2 only: that step changes nothing, the next ones train. The checkpoints
    here come from `train.save_every_minutes` alone (a tiny interval: one per step), which saves
    the suite a second run."""
    monkeypatch.setenv(FAULT_INJECT_ENV, "nan_loss@step=2")
    out = tmp_path / "run"
    Trainer(compose(*hotel, "train.max_steps=3", "train.save_every=0", "train.save_every_minutes=1e-9",
                    f"output_dir={out}")).train()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_1", "step_2", "step_3"]
    adapters = [load_file(out / "checkpoints" / f"step_{n}" / ADAPTER) for n in (1, 2, 3)]
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])
    assert any(not torch.equal(adapters[1][k], adapters[2][k]) for k in adapters[0])
    assert json.loads((out / "summary.json").read_text())["train/steps"] == 3
    assert checkpoint.load_state(out / "checkpoints" / "step_3")["skipped_steps"] == 1


def corrupt(directory: Path, how: str) -> Path:
    """Damage a checkpoint as a crash or a bad disk would; returns the file the warning must name."""
    target = {"truncated_safetensors": ADAPTER, "missing_state": checkpoint.STATE_FILE,
              "garbage_state": checkpoint.STATE_FILE}[how]
    path = directory / target
    if how == "truncated_safetensors":
        path.write_bytes(path.read_bytes()[:-64])
    elif how == "missing_state":
        path.unlink()
    else:
        path.write_bytes(b"\x00not a torch file")
    return path


CORRUPTIONS = ["truncated_safetensors", "missing_state", "garbage_state"]


def test_resume_auto_skips_corrupt_and_unfinished_checkpoints(straight, tmp_path):
    """The newest three checkpoints damaged one way each, a stray staging dir newer still:
    resume=auto warns once per skipped dir, naming the file, and takes the newest valid one."""
    checkpoints = tmp_path / "run" / "checkpoints"
    for n in range(2, 6):
        shutil.copytree(straight / "checkpoints" / f"step_{n}", checkpoints / f"step_{n}")
    named = [corrupt(checkpoints / f"step_{n}", how) for n, how in zip((5, 4, 3), CORRUPTIONS)]
    shutil.copytree(straight / "checkpoints" / "step_6", checkpoints / ".step_6.tmp")
    warnings: list[str] = []
    found = checkpoint.latest_checkpoint(tmp_path / "run", warnings.append, remove_unfinished=True)
    assert found is not None and found[0] == checkpoints / "step_2" and found[1]["step"] == 2
    assert len(warnings) == 4
    assert ".step_6.tmp" in warnings[0] and not (checkpoints / ".step_6.tmp").exists()
    for line, path in zip(warnings[1:], named):
        assert str(path) in line


def test_replacement_interrupted_keeps_the_old_checkpoint(straight, tmp_path):
    """A crash in `commit` after the old dir was moved aside, before the new one landed."""
    checkpoints = tmp_path / "run" / "checkpoints"
    shutil.copytree(straight / "checkpoints" / "step_3", checkpoints / ".step_4.old")
    shutil.copytree(straight / "checkpoints" / "step_4", checkpoints / ".step_4.tmp")
    found = checkpoint.latest_checkpoint(tmp_path / "run", lambda line: None)
    assert found is not None and found[0] == checkpoints / ".step_4.old"
    checkpoint.commit(checkpoints / ".step_4.tmp", checkpoints / "step_4")
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_4"]


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the check that should have failed")

    monkeypatch.setattr("trainer.loop.load_model", refuse)


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_explicit_corrupt_resume_fails_before_the_model_loads(how, hotel, straight, tmp_path, no_model_load):
    directory = tmp_path / "step_2"
    shutil.copytree(straight / "checkpoints" / "step_2", directory)
    named = corrupt(directory, how)
    with pytest.raises(ValueError, match=f"resume={directory}: {named}"):
        Trainer(compose(*hotel, f"output_dir={tmp_path / 'run'}", f"resume={directory}"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_keep_last_never_deletes_the_resumed_checkpoint(hotel, server, straight, tmp_path):
    out = tmp_path / "run"
    start = STEPS - 4
    shutil.copytree(straight / "checkpoints" / f"step_{start}", out / "checkpoints" / f"step_{start}")
    assert server.run([*hotel, f"output_dir={out}", "resume=auto", "train.keep_last=2"], tmp_path / "log.txt") == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted(
        [f"step_{start}", f"step_{STEPS - 1}", f"step_{STEPS}"])
    assert_same_final(out, straight)


def test_preflight_fails_before_the_model_loads(hotel, tmp_path, monkeypatch, no_model_load):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=f"output_dir={blocker / 'run'} cannot be written"):
        Trainer(compose(*hotel, f"output_dir={blocker / 'run'}"))
    monkeypatch.setattr("trainer.checkpoint.shutil.disk_usage", lambda path: shutil._ntuple_diskusage(1, 0, 1000))
    with pytest.raises(ValueError, match=r"GiB free on its disk, less than one checkpoint \(estimated"):
        Trainer(compose(*hotel, f"output_dir={tmp_path / 'run'}"))


# ---------------------------------------------------------------- two processes (gloo)
def rank_pid(agent: subprocess.Popen, rank: int) -> int:
    for pid in child_pids(agent.pid):
        if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            return pid
    raise AssertionError(f"no rank {rank} under torchrun {agent.pid}")


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_sigterm_on_one_rank_checkpoints_all_and_resumes_bit_exact(engine, hotel, tmp_path, monkeypatch):
    """Two ranks (DDP, or FSDP with its sharded DCP checkpoint); rank 1 alone reports a NaN loss at
    step 2 (both must skip it) and alone gets SIGTERM later (both must checkpoint the same step).
    Resumed, both ranks end with the weights of the straight two-process run."""
    monkeypatch.setenv(FAULT_INJECT_ENV, "nan_loss@step=2,rank=1")
    two_ranks = [*hotel, f"dist={engine}", "train.max_steps=10"]
    finish(torchrun("tests/dist_worker.py", str(tmp_path / "straight_dump"), *two_ranks,
                    f"output_dir={tmp_path / 'straight'}"))
    out = tmp_path / "run"
    agent = torchrun("launch/train.py", *two_ranks, f"output_dir={out}", f"hydra.run.dir={tmp_path / 'hydra'}")
    wait_for_step(out, 3, agent)
    os.kill(rank_pid(agent, 1), signal.SIGTERM)
    log, _ = agent.communicate(timeout=300)
    assert agent.returncode != 0 and f"exitcode  : {REQUEUE_EXIT_CODE}" in log, log[-4000:]
    step = int(log.split("preempted at step ")[1].split(":")[0])
    assert (out / "checkpoints" / f"step_{step}" / "rng_state_rank1.pt").is_file()  # both ranks wrote it
    finish(torchrun("tests/dist_worker.py", str(tmp_path / "dump"), *two_ranks, f"output_dir={out}", "resume=auto"))
    straight = [load_file(tmp_path / "straight_dump" / f"rank{r}.safetensors") for r in (0, 1)]
    resumed = [load_file(tmp_path / "dump" / f"rank{r}.safetensors") for r in (0, 1)]
    for weights in (*straight, resumed[1]):
        assert all(torch.equal(resumed[0][k], weights[k]) for k in resumed[0])
    assert checkpoint.load_state(out / "checkpoints" / "step_10")["skipped_steps"] == 1


@pytest.mark.slow
def test_failing_rank_fails_the_job_and_is_named(hotel, tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_INJECT_ENV, "raise@step=3,rank=1")
    agent = torchrun("launch/train.py", *hotel, "dist=ddp", "dist.timeout_minutes=0.5",
                     f"output_dir={tmp_path / 'run'}", f"hydra.run.dir={tmp_path / 'hydra'}")
    try:
        log, _ = agent.communicate(timeout=0.5 * 60 + 90)  # dist.timeout_minutes, plus start-up
    except subprocess.TimeoutExpired:
        os.killpg(agent.pid, signal.SIGKILL)
        pytest.fail("the job hung after rank 1 failed")
    assert agent.returncode != 0
    assert "error: rank 1 of 2 failed at step 3: RuntimeError: " in log, log[-4000:]
    assert "injected failure at step 3 on rank 1" in log
