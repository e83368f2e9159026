"""Loss and attention implementations side by side: real tokens/s and peak RSS of the training loop.

    python bench/loss_attention.py --kernels     # the attention kernels alone, one packed row
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
    trainer = Trainer(cfg)
    trainer.train()
    events = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in events if "train/tokens_per_s" in e]
    seen = [0] + [e["train/tokens_seen"] for e in steps]
    tokens = [b - a for a, b in zip(seen, seen[1:])][warmup:]
    seconds = [n / e["train/tokens_per_s"] for n, e in zip(tokens, steps[warmup:])]
    return {"tokens_per_step": sum(tokens) / len(tokens), "tok_s": sum(tokens) / sum(seconds),
            "step_s": sum(seconds) / len(seconds), "loss": steps[-1]["train/loss"],
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "saved_gib": saved_for_backward(trainer) / 2**30}


def saved_for_backward(trainer) -> int:
    """Bytes autograd keeps for the backward of step 0's first micro-batch (weights excluded): what the
    loss and attention choices change, free of the timing noise of a shared machine."""
    import torch

    from eval.loss import summed_token_loss

    weights = {p.untyped_storage().data_ptr() for p in trainer.model.parameters()}
    saved: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.untyped_storage().data_ptr() not in weights:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    batch = trainer.micro_batches(trainer.train_split, trainer.sampler.micro_batches(0))[0]
    t = trainer.cfg.train
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        summed_token_loss(trainer.model, batch, t.loss_impl, t.loss_chunk)
    return sum(saved.values())


def attention_kernels(repeats: int = 6) -> None:
    """One attention call (forward + backward) on a packed row, SmolLM2's heads, as the layers make it:
    SDPA with transformers' block-diagonal bool mask against SDPA once per document (`document_sdpa`)."""
    import time

    import torch
    import torch.nn.functional as F

    from models.attention import document_sdpa_forward

    heads, kv_heads, head_dim, docs = 9, 3, 64, [700, 900, 448]
    length = sum(docs)
    positions = torch.cat([torch.arange(n) for n in docs])[None]
    doc = torch.repeat_interleave(torch.arange(len(docs)), torch.tensor(docs))
    mask = ((doc[:, None] == doc[None, :]) & (torch.arange(length)[:, None] >= torch.arange(length)[None, :]))

    class Layer(torch.nn.Module):
        num_key_value_groups = heads // kv_heads

    def dense(q, k, v):
        k, v = (x.repeat_interleave(heads // kv_heads, 1) for x in (k, v))  # transformers repeats K/V with a mask
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None, None])

    def per_document(q, k, v):
        return document_sdpa_forward(Layer(), q, k, v, None, position_ids=positions)[0]

    print(f"attention on one packed row of {length} ({docs}), {heads} heads / {kv_heads} KV, fp32, "
          f"forward + backward, median of {repeats}:")
    for name, fn in (("sdpa + block mask", dense), ("document_sdpa", per_document)):
        q = torch.randn(1, heads, length, head_dim, requires_grad=True)
        k, v = (torch.randn(1, kv_heads, length, head_dim, requires_grad=True) for _ in range(2))
        saved: dict[int, int] = {}

        def keep(t: torch.Tensor) -> torch.Tensor:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            out = fn(q, k, v)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(q, k, v).sum().backward()
            times.append(time.perf_counter() - start)
        print(f"  {name}: {1000 * sorted(times)[len(times) // 2]:.0f} ms, saved for backward "
              f"{sum(saved.values()) / 2**20:.1f} MiB ({type(out.grad_fn).__name__})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="model preset (conf/model), default smollm2")
    parser.add_argument("--steps", type=int, default=6, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    parser.add_argument("--kernels", action="store_true", help="only time the attention kernels on one row")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every variant")
    args = parser.parse_args()
    if args.kernels:
        attention_kernels()
        return
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
    print("| variant | real tokens/step | real tok/s | step s | peak RSS GiB | saved for backward GiB "
          "| tok/s ratio | RSS ratio | loss |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        ratios = (f"{r['tok_s'] / base['tok_s']:.2f}x | {r['peak_rss_gib'] / base['peak_rss_gib']:.2f}x"
                  if base else "n/a | n/a")
        print(f"| {name} | {r['tokens_per_step']:.0f} | {r['tok_s']:.1f} | {r['step_s']:.2f} | "
              f"{r['peak_rss_gib']:.2f} | {r['saved_gib']:.2f} | {ratios} | {r['loss']:.4f} |")


if __name__ == "__main__":
    main()
