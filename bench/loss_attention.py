"""Loss and attention implementations side by side: real tokens/s and peak RSS of the training loop.

    python bench/loss_attention.py [--model PRESET] [--steps 6] [--warmup 2] [--only NAME ...] [-- overrides...]

Every variant is the project's own loop (`Trainer.train`, the hotel data packed into rows of
`train.seq_len`, LoRA r16 on all linears, fp32, AdamW lr 1e-4) in its own process, so each peak RSS
is that variant's alone; the model is a preset (default `model=smollm2`, SmolLM2-135M-Instruct) and
trailing overrides apply to every variant (e.g. `train.seq_len=4096`, or `train.precision=bf16` on a
GPU). tokens/s counts real (unpadded) tokens over the timed steps, after the warm-up steps
(compilation happens there). Variants that need CUDA are skipped on CPU.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COMMON = ["peft=lora", "peft.r=16", "peft.alpha=32", "peft.dropout=0", "peft.target_modules=[all-linear]",
          "model.dtype=float32", "train.precision=fp32", "optim.lr=1e-4", "train.seq_len=2048", "train.batch_size=1",
          "train.grad_accum=1", "train.log_every=1", "train.eval_every=0", "train.save_every=0", "data.dev=null",
          "logger.plots=false", "sched.warmup_steps=0"]
VARIANTS = {  # name: overrides; the first is the baseline the ratios are to (what the loop did before)
    "sdpa + full logits": ["model.attn_implementation=sdpa", "train.loss_impl=full"],
    "sdpa + chunked loss": ["model.attn_implementation=sdpa", "train.loss_impl=chunked"],
    "eager + chunked": ["model.attn_implementation=eager", "train.loss_impl=chunked"],
    "document_sdpa + chunked": ["model.attn_implementation=document_sdpa", "train.loss_impl=chunked"],
    "sdpa + chunked + compile": ["model.attn_implementation=sdpa", "train.loss_impl=chunked", "train.compile=true"],
    "document_sdpa + chunked + compile": ["model.attn_implementation=document_sdpa", "train.loss_impl=chunked",
                                          "train.compile=true"],
    # CUDA only: FlexAttention has no backward on CPU (torch 2.13), Liger is Triton
    "flex_attention + chunked": ["model.attn_implementation=flex_attention", "train.loss_impl=chunked"],
    "flash_attention_2 + chunked": ["model.attn_implementation=flash_attention_2", "train.loss_impl=chunked"],
    "sdpa + liger": ["model.attn_implementation=sdpa", "train.loss_impl=liger"],
}
CUDA_ONLY = {"flex_attention + chunked", "flash_attention_2 + chunked", "sdpa + liger"}


def child(overrides: list[str], warmup: int) -> dict:
    """Run the loop in this process; its timed-step throughput and this process's peak RSS."""
    from hydra import compose, initialize_config_dir

    from trainer.config import register_configs
    from trainer.loop import Trainer

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    Trainer(cfg).train()
    events = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in events if "train/tokens_per_s" in e]
    seen = [0] + [e["train/tokens_seen"] for e in steps]
    tokens = [b - a for a, b in zip(seen, seen[1:])][warmup:]
    seconds = [n / e["train/tokens_per_s"] for n, e in zip(tokens, steps[warmup:])]
    return {"tokens_per_step": sum(tokens) / len(tokens), "tok_s": sum(tokens) / sum(seconds),
            "step_s": sum(seconds) / len(seconds), "loss": steps[-1]["train/loss"],
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="model preset (conf/model), default smollm2")
    parser.add_argument("--steps", type=int, default=6, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every variant")
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child), args.warmup)), flush=True)
        return
    import torch

    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-loss-attn-") as out:
        for i, (name, variant) in enumerate(VARIANTS.items()):
            if args.only and name not in args.only:
                continue
            if name in CUDA_ONLY and not torch.cuda.is_available():
                print(f"{name}: skipped (CUDA only)", file=sys.stderr)
                continue
            overrides = [f"model={args.model}"] + COMMON + [f"train.max_steps={args.warmup + args.steps}",
                                  f"output_dir={out}/{i}"] + variant + args.overrides
            run = subprocess.run([sys.executable, __file__, "--warmup", str(args.warmup), "--child",
                                  json.dumps(overrides)], cwd=ROOT, capture_output=True, text=True)
            lines = [l for l in run.stdout.splitlines() if l.startswith("RESULT ")]
            if run.returncode or not lines:
                print(f"{name}: failed (exit {run.returncode})\n{run.stderr[-3000:]}", file=sys.stderr)
                continue
            rows[name] = json.loads(lines[-1][len("RESULT "):])
            print(f"{name}: {rows[name]}", file=sys.stderr, flush=True)
    base = rows.get(next(iter(VARIANTS)))
    print(f"model={args.model}, {args.steps} timed steps after {args.warmup} warm-up, extra: {args.overrides}")
    print("| variant | real tokens/step | real tok/s | step s | peak RSS GiB | tok/s ratio | RSS ratio | loss |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        ratios = (f"{r['tok_s'] / base['tok_s']:.2f}x | {r['peak_rss_gib'] / base['peak_rss_gib']:.2f}x"
                  if base else "n/a | n/a")
        print(f"| {name} | {r['tokens_per_step']:.0f} | {r['tok_s']:.1f} | {r['step_s']:.2f} | "
              f"{r['peak_rss_gib']:.2f} | {ratios} | {r['loss']:.4f} |")


if __name__ == "__main__":
    main()
