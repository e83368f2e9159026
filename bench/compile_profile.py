"""Where a step's time goes, eager against `train.compile=true`: the reason compile does or does not pay here.

    python bench/compile_profile.py [--seq-len 1024] [--warmup 2] [--steps 2] [--modes eager,compile] [-- overrides...]

Each mode is the project's own loop (`Trainer`: SmolLM2-135M, LoRA r16 on all linears, fp32, one packed row of
`--seq-len` per step) in its own process. After the warm-up steps (compilation happens there) the timed steps run
under `torch.profiler`; the table groups the profile's self CPU time into what runs it — BLAS/oneDNN matmuls,
attention, inductor's generated kernels, other aten ops, and the Python/dispatcher time between them — and names
the top ops. Dynamo's counters say how many graphs, graph breaks and recompiles there were. `--modes eager` with
`-- train.precision=bf16` names the ops a precision spends its time in.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COMMON = ["model=smollm2", "peft=lora", "peft.r=16", "peft.alpha=32", "peft.dropout=0",
          "peft.target_modules=[all-linear]", "model.dtype=float32", "train.precision=fp32", "train.batch_size=1",
          "train.grad_accum=1", "train.eval_every=0", "train.save_every=0", "data.dev=null", "logger.plots=false",
          "sched=constant", "sched.warmup_steps=0"]
MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "mkldnn", "mkl::", "aten::linear")
MODES = {"eager": [], "compile": ["train.compile=true"]}
ATTENTION = ("scaled_dot_product", "flash_attention")


def kind(name: str) -> str:
    if name.startswith(("cpp_fused", "kernel_cpp", "Torch-Compiled Region", "CompiledFunction")) or "inductor" in name:
        return "inductor kernels"
    if any(a in name for a in ATTENTION):
        return "attention"
    if any(name.startswith(m) for m in MATMUL):
        return "matmuls"
    return "other aten ops" if name.startswith("aten::") else "other"


def child(overrides: list[str], warmup: int, steps: int) -> dict:
    import torch
    from hydra import compose, initialize_config_dir
    from torch._dynamo.utils import counters

    from trainer.config import register_configs
    from trainer.loop import Trainer

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    trainer = Trainer(cfg)

    def step(n: int) -> float:
        start = time.perf_counter()
        batches = trainer.micro_batches(trainer.train_split, trainer.sampler.micro_batches(n))
        loss_sum, _ = trainer.forward_backward(batches)
        trainer.optimizer_step(loss_sum)
        return time.perf_counter() - start

    warm = [step(n) for n in range(warmup)]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        timed = [step(warmup + n) for n in range(steps)]
    by_kind: Counter = Counter()
    by_op: Counter = Counter()
    for event in prof.key_averages():
        by_kind[kind(event.key)] += event.self_cpu_time_total / 1e6
        by_op[event.key] += event.self_cpu_time_total / 1e6
    return {"warmup_s": warm, "step_s": timed, "by_kind": dict(by_kind), "top_ops": by_op.most_common(12),
            "graphs": trainer.compiled.graphs if trainer.compiled else 0,
            "graph_breaks": sum(counters["graph_break"].values()),
            "recompiles": sum(counters["recompiles"].values())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {list(MODES)}")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child), args.warmup, args.steps)))
        return
    results = {}
    for mode in args.modes.split(","):
        extra = MODES[mode]
        with tempfile.TemporaryDirectory() as out:
            overrides = COMMON + [f"train.seq_len={args.seq_len}", f"train.max_steps={args.warmup + args.steps}",
                                  f"output_dir={out}", *extra, *args.overrides]
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(overrides), "--warmup",
                                   str(args.warmup), "--steps", str(args.steps)], cwd=ROOT, capture_output=True,
                                  text=True)
        if proc.returncode:
            raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    kinds = sorted({k for r in results.values() for k in r["by_kind"]})
    print(f"| seconds per step (self CPU, {args.steps} profiled steps) | " + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    print("| wall-clock step | " + " | ".join(f"{sum(r['step_s']) / len(r['step_s']):.2f}" for r in results.values())
          + " |")
    for k in kinds:
        print(f"| {k} | " + " | ".join(f"{r['by_kind'].get(k, 0) / args.steps:.2f}" for r in results.values()) + " |")
    for mode, r in results.items():
        print(f"\n{mode}: warm-up steps {', '.join(f'{s:.1f}' for s in r['warmup_s'])} s; graphs {r['graphs']}, "
              f"graph breaks {r['graph_breaks']}, recompiles {r['recompiles']}")
        for name, seconds in r["top_ops"]:
            print(f"  {seconds / args.steps:7.2f} s  {name}")


if __name__ == "__main__":
    main()
