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
                step_seconds: float, save_every: int) -> tuple[float, int]:
    """Run `cmd` until it finishes, sending `sig` `count` times at random moments; (seconds, interruptions)."""
    shutil.rmtree(out, ignore_errors=True)
    env = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    start, done = time.perf_counter(), 0
    while True:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if done < count:
            # Wait for training to start, then anything up to two checkpoint intervals (mid-step, mid-save).
            while steps_logged(out) == 0 and proc.poll() is None:
                time.sleep(0.05)
            try:
                proc.wait(timeout=rng.uniform(0.2, 2 * save_every + 1) * step_seconds)
            except subprocess.TimeoutExpired:
                proc.send_signal(sig)
                code = proc.wait()
                expected = REQUEUE_EXIT_CODE if sig == signal.SIGTERM else -signal.SIGKILL
                assert code == expected, f"{sig.name}: exit {code}, expected {expected}"
                done += 1
                continue
        assert proc.wait() == 0, f"run failed: {out}"
        return time.perf_counter() - start, done


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
    rows = [("straight", straight, 0, True)]
    for name, sig, count in (("SIGTERM", signal.SIGTERM, args.preemptions), ("SIGKILL", signal.SIGKILL, args.kills)):
        seconds, done = interrupted(base / name, cmd(name), sig, count, rng, step_seconds, args.save_every)
        rows.append((name, seconds, done, same_final(base / name, base / "straight")))
    print(f"{args.steps} steps, checkpoint every {args.save_every}; one step ≈ {step_seconds:.2f} s\n")
    print("| run | interruptions | wall s | lost per interruption, s | in steps | final bit-identical |")
    print("|---|---:|---:|---:|---:|---|")
    for name, seconds, done, same in rows:
        lost = (seconds - straight) / done if done else 0.0
        print(f"| {name} | {done} | {seconds:.1f} | {lost:.1f} | {lost / step_seconds:.1f} | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
