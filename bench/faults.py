"""Time lost to interruptions: one straight run, then the same run preempted (SIGTERM) and hard-killed
(SIGKILL) at random moments, resumed with `resume=auto` each time until it finishes. Every process is
a real `launch/train.py` (start-up, imports and model loading count). Prints a Markdown table.

    python bench/faults.py [--steps 40] [--save-every 5] [--preemptions 5] [--kills 10] [overrides...]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
REQUEUE_EXIT_CODE = 75  # trainer/faults.py (not imported: the bench only drives the command line)


def train_cmd(out: Path, steps: int, save_every: int, extra: list[str]) -> list[str]:
    return [sys.executable, "launch/train.py", f"output_dir={out}", f"hydra.run.dir={out}/hydra", "resume=auto",
            f"train.max_steps={steps}", f"train.save_every={save_every}", "train.eval_every=0", "data.dev=null",
            "logger.plots=false", "train.log_every=1", *extra]


def steps_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return 0
    return sum('"train/loss"' in line for line in path.read_text().splitlines())


def interrupted(out: Path, cmd: list[str], sig: signal.Signals, count: int, rng: random.Random,
                save_every: int) -> tuple[float, int, float]:
    """Run `cmd` until it finishes, sending `sig` `count` times, each after 1 to 2 × save_every + 1 more
    logged steps and a random part of a second (mid-step or mid-checkpoint, whatever the machine's speed).
    Returns (seconds, interruptions, mean seconds from a process's start to its first logged step)."""
    shutil.rmtree(out, ignore_errors=True)
    env = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    start, done, startups = time.perf_counter(), 0, []
    while True:
        began, logged = time.perf_counter(), steps_logged(out)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = logged + 1 + (rng.randint(0, 2 * save_every) if done < count else 0)
        while steps_logged(out) < target and proc.poll() is None:
            time.sleep(0.02)
        if steps_logged(out) > logged:
            startups.append(time.perf_counter() - began)
        if done < count and proc.poll() is None:
            time.sleep(rng.uniform(0, 0.5))
            if proc.poll() is None:
                proc.send_signal(sig)
                code = proc.wait()
                expected = REQUEUE_EXIT_CODE if sig == signal.SIGTERM else -signal.SIGKILL
                assert code in (expected, 0), f"{sig.name}: exit {code}, expected {expected}"
                done += code == expected
                if code == expected:
                    continue
        assert proc.wait() == 0, f"run failed: {out}"
        if done >= count:
            return time.perf_counter() - start, done, sum(startups) / len(startups)
        shutil.rmtree(out, ignore_errors=True)  # finished before all interruptions: start over
        start, done, startups = time.perf_counter(), 0, []


def same_final(a: Path, b: Path) -> bool:
    name = next(p.name for p in (a / "final").glob("*.safetensors"))
    x, y = load_file(a / "final" / name), load_file(b / "final" / name)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--save-every", type=int, default=5)
    parser.add_argument("--preemptions", type=int, default=5)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--out", default="outputs/bench/faults")
    args, extra = parser.parse_known_args()
    base, rng = ROOT / args.out, random.Random(0)
    cmd = lambda name: train_cmd(base / name, args.steps, args.save_every, extra)  # noqa: E731

    shutil.rmtree(base / "straight", ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(cmd("straight"), cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    straight = time.perf_counter() - start
    logged = [m for m in map(json.loads, (base / "straight" / "metrics.jsonl").read_text().splitlines())
              if "train/tokens_per_s" in m]
    seen = [0] + [m["train/tokens_seen"] for m in logged]
    step_seconds = sum((seen[i + 1] - seen[i]) / m["train/tokens_per_s"] for i, m in enumerate(logged)) / len(logged)
    rows = [("straight", straight, 0, 0.0, 0, True)]
    for name, sig, count in (("SIGTERM", signal.SIGTERM, args.preemptions), ("SIGKILL", signal.SIGKILL, args.kills)):
        seconds, done, startup = interrupted(base / name, cmd(name), sig, count, rng, args.save_every)
        redone = steps_logged(base / name) - args.steps
        rows.append((name, seconds, done, startup, redone, same_final(base / name, base / "straight")))
    print(f"{args.steps} steps, checkpoint every {args.save_every}; one step ≈ {step_seconds:.2f} s in the straight run\n")
    print("| run | interruptions | wall s | lost per interruption, s | steps redone per interruption "
          "| start to first step, s | final bit-identical |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, seconds, done, startup, redone, same in rows:
        per = (lambda x: x / done) if done else (lambda x: 0.0)
        print(f"| {name} | {done} | {seconds:.1f} | {per(seconds - straight):.1f} | {per(redone):.1f} | "
              f"{startup:.1f} | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
