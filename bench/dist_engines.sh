#!/bin/bash
# Every dist engine (DDP, DeepSpeed ZeRO, FSDP2) on the same run, side by side: tokens/s, its ratio to DDP's,
# and peak CUDA memory.
#   bash bench/dist_engines.sh [NPROC] [STEPS] [extra overrides...]
# On CPU (gloo) it shows the engines' overhead on the tiny model; on GPUs pass a real model, e.g.
#   bash bench/dist_engines.sh 1 30 model=qwen2 model.path=/models/Qwen2-0.5B-Instruct train.precision=bf16
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC=${1:-2}; STEPS=${2:-12}; shift $(( $# < 2 ? $# : 2 ))
OUT=${BENCH_OUT:-outputs/bench/dist}
ENGINES=${ENGINES:-"ddp zero1 zero2 zero3 zero2_offload zero3_offload fsdp fsdp_grad_op"}
for engine in $ENGINES; do
  rm -rf "$OUT/$engine"
  .venv/bin/torchrun --standalone --nproc_per_node "$NPROC" launch/train.py dist="$engine" train.max_steps="$STEPS" \
    train.log_every=1 train.eval_every=0 train.save_every=0 logger.plots=false output_dir="$OUT/$engine" "$@" \
    > "$OUT.$engine.log" 2>&1 || { echo "$engine failed: see $OUT.$engine.log"; exit 1; }
done
.venv/bin/python - "$OUT" $ENGINES <<'PY'
import json, sys
from pathlib import Path
out, engines = Path(sys.argv[1]), sys.argv[2:]
def rows(engine):
    # Skip the first two steps (warm-up: DeepSpeed's first step builds buckets, CUDA its kernels).
    lines = [json.loads(l) for l in (out / engine / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if "train/tokens_per_s" in m][2:]
stats = {}
for e in engines:
    r = rows(e)
    mems = [m["train/mem_gb"] for m in r if "train/mem_gb" in m]  # CUDA only
    stats[e] = (sum(m["train/tokens_per_s"] for m in r) / len(r), f"{max(mems):.2f}" if mems else "n/a",
                r[-1]["train/loss"])
base = stats.get("ddp", next(iter(stats.values())))[0]
print("| dist | tokens/s | vs ddp | peak mem GiB | loss at last step |\n|---|---:|---:|---:|---:|")
for e, (tps, mem, loss) in stats.items():
    print(f"| {e} | {tps:,.0f} | {tps / base:.2f}x | {mem} | {loss:.4f} |")
PY
