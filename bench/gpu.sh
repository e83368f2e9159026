#!/bin/bash
# Everything only a GPU can show, in one script meant to finish in under 8 minutes on one H100/H200:
#   bash bench/gpu.sh [--dry-run]
# 1. installs the wheels bench/wheels.sh fetched (.whl/) when the image lacks them
# 2. the CUDA-marked tests (pytest -m cuda: the memory estimator within 15% of max_memory_allocated)
# 3. a few steps of every PEFT method, then of every bitsandbytes optimizer (8-bit, paged) and QLoRA
# 4. the estimator's peak beside the measured one for the 7B run of step 6
# 5. bench/compare_hf.py at the Qwen2-0.5B shape (sdpa), 6. at the Qwen2-7B shape (sdpa, grad ckpt)
# 7. one-process DDP, ZeRO-2, ZeRO-3, FSDP2 and FSDP2 grad-op over NCCL (bench/dist_engines.sh)
# 8. compare_hf at 0.5B with flex_attention, and flash_attention_2 where flash_attn is installed
# Sections run in that order, each under its own timeout; once BUDGET_S (default 470 s) is spent the
# rest are skipped and say so. Results: $OUT (the device tool's folder) or bench/gpu_results/:
# summary.md (every section's status and tables) and logs.tar.gz (every log).
# --dry-run prints the plan and checks what it can without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0; [ "${1:-}" = "--dry-run" ] && DRY=1
RES=${OUT:-bench/gpu_results}
LOGS=$(mktemp -d)
BUDGET_S=${BUDGET_S:-470}
WORK=${GPU_WORK:-/tmp/turnpack-gpu}
export TURNPACK_HOME=$WORK/home PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HYDRA_FULL_ERROR=1
PY=python3
SHAPE05=$WORK/compare/models/qwen2-0.5b-random
SHAPE7=$WORK/compare/models/qwen2-7b-random
START=$(date +%s)
mkdir -p "$RES"
SUMMARY=$RES/summary.md
[ $DRY = 1 ] && SUMMARY=/dev/stdout
[ $DRY = 1 ] || : > "$SUMMARY"

note() { echo "$*" >> "$SUMMARY"; [ $DRY = 1 ] || echo "$*"; }

# step NAME TIMEOUT_S CMD...: run CMD (a bash string) with its log in $LOGS/NAME.log, noting the outcome.
step() {
  local name=$1 limit=$2; shift 2
  local elapsed=$(( $(date +%s) - START ))
  if [ $DRY = 1 ]; then printf '\n[%s, at most %ss]\n  %s\n' "$name" "$limit" "$*"; return 0; fi
  if (( elapsed + 20 > BUDGET_S )); then note "- $name: skipped (time budget spent: ${elapsed}s of ${BUDGET_S}s)"; return 1; fi
  (( limit > BUDGET_S - elapsed )) && limit=$(( BUDGET_S - elapsed ))
  local t0=$(date +%s)
  timeout --kill-after 10 "$limit" bash -c "$*" > "$LOGS/$name.log" 2>&1
  local rc=$? took=$(( $(date +%s) - t0 ))
  if [ $rc = 0 ]; then note "- $name: ok (${took}s)"; else note "- $name: FAILED rc=$rc (${took}s; $name.log): $(tail -3 "$LOGS/$name.log" | tr '\n' ' ' | cut -c1-400)"; fi
  return $rc
}

note "# bench/gpu.sh on $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo 'no GPU') ($(date -u +%FT%TZ))"
note ""

# 1. dependencies the image lacks (see bench/wheels.sh), into a target dir on PYTHONPATH
INSTALL="$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $WORK/site .whl/*.whl \
  && $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target $WORK/site .whl/*.tar.gz"
export PYTHONPATH=$WORK/site:$PWD
NEEDED="import datasets, bitsandbytes, deepspeed, hydra, omegaconf, nltk"
if [ $DRY = 1 ]; then
  ls .whl/*.whl .whl/*.tar.gz > /dev/null 2>&1 || echo "(dry run) no wheels in .whl/: run bash bench/wheels.sh first"
  step install 150 "$INSTALL"
elif ! $PY -c "$NEEDED" 2> /dev/null; then
  step install 150 "$INSTALL" || { note "cannot continue without the dependencies"; }
fi
# dist_engines.sh runs .venv/bin/python and .venv/bin/torchrun: shims to this image's python
if [ ! -x .venv/bin/python ] && [ $DRY = 0 ]; then
  mkdir -p .venv/bin
  printf '#!/bin/bash\nexec %s "$@"\n' "$(command -v $PY)" > .venv/bin/python
  printf '#!/bin/bash\nexec %s -m torch.distributed.run "$@"\n' "$(command -v $PY)" > .venv/bin/torchrun
  chmod +x .venv/bin/python .venv/bin/torchrun
fi
step versions 30 "$PY - <<'PY'
import importlib
for m in ('torch', 'transformers', 'peft', 'datasets', 'bitsandbytes', 'deepspeed', 'flash_attn', 'liger_kernel'):
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as e:
        print(m, 'missing:', type(e).__name__)
import torch; print('cuda', torch.version.cuda, torch.cuda.get_device_name(0))
PY"

# 2. CUDA-marked tests (collection errors in unrelated modules do not stop them)
step pytest_cuda 150 "$PY -m pytest -m cuda -q -rA --continue-on-collection-errors -p no:cacheprovider tests"

# the two random-weight shapes compare_hf uses (built once, on the GPU)
COMPARE="$PY bench/compare_hf.py --workdir $WORK/compare --device cuda --warmup 2 --steps 3"
step shapes 120 "$PY -c \"
from pathlib import Path; from bench.compare_hf import build_shape
for name, target in (('qwen2-0.5b', '$SHAPE05'), ('qwen2-7b', '$SHAPE7')):
    Path(target, 'config.json').is_file() or build_shape(name, target, 'cuda')\""

# 3. every PEFT method, then the bitsandbytes optimizers, a few steps each (Hydra multirun: one process)
TRAIN="$PY launch/train.py model=qwen2 model.path=$SHAPE05 train.seq_len=1024 train.batch_size=2 train.max_steps=3 \
  train.log_every=1 data.dev=null logger.plots=false train.device=cuda"
step peft_methods 120 "$TRAIN -m peft=lora,dora,ia3,qlora,prompt_tuning,p_tuning,prefix_tuning,none hydra.sweep.dir=$WORK/peft"
step optimizers 90 "$TRAIN -m optim=adamw_8bit,paged_adamw_8bit,paged_adamw_32bit hydra.sweep.dir=$WORK/optim \
  && $TRAIN peft=qlora optim=paged_adamw_8bit train.grad_ckpt=true output_dir=$WORK/optim/qlora_paged"

# 5./6. side by side with HF Trainer + PEFT: ~16k real tokens per step, 8 dialogues per HF batch
step compare_05b_sdpa 150 "$COMPARE --model qwen2-0.5b --tokens 16384 --per-batch 8 --attn sdpa --json $WORK/compare_05b_sdpa.json"
step compare_7b_sdpa 170 "$COMPARE --model qwen2-7b --tokens 16384 --per-batch 8 --attn sdpa --grad-ckpt --modes hf_flat,ours,hf_padded \
  --json $WORK/compare_7b_sdpa.json"

# 4. the estimator for the 7B run just measured (ours: LoRA r16 all-linear, one row of 16,384, grad ckpt)
step estimate_7b 30 "$PY launch/estimate_memory.py model=qwen2 model.path=$SHAPE7 peft.r=16 peft.target_modules=[all-linear] \
  train.batch_size=1 train.seq_len=16384 train.grad_ckpt=true"

# 7. engines over NCCL, one process each
step dist_engines 160 "ENGINES='ddp zero2 zero3 fsdp fsdp_grad_op' BENCH_OUT=$WORK/dist bash bench/dist_engines.sh 1 8 model=qwen2 model.path=$SHAPE05 \
  train.precision=bf16 train.seq_len=2048 train.batch_size=4 data.dev=null"

# 8. other attention kernels at 0.5B
step compare_05b_flex 100 "$COMPARE --model qwen2-0.5b --tokens 16384 --per-batch 8 --attn flex_attention --modes hf_flat,ours \
  --json $WORK/compare_05b_flex.json"
if [ $DRY = 1 ] || $PY -c "import flash_attn" 2> /dev/null; then
  step compare_05b_flash 100 "$COMPARE --model qwen2-0.5b --tokens 16384 --per-batch 8 --attn flash_attention_2 --modes hf_flat,ours \
    --json $WORK/compare_05b_flash.json"
else
  note "- compare_05b_flash: skipped (flash_attn is not installed)"
fi

[ $DRY = 1 ] && exit 0
# tables: the side-by-side runs, and the last lines of the sections that print one
{
  echo; echo "## compare_hf (real tokens/s, max_memory_allocated)"
  for f in "$LOGS"/compare_*.log; do [ -f "$f" ] && { echo; echo "### $(basename "$f" .log)"; grep -E '^\||^best|^qwen|^smollm' "$f"; }; done
  echo; echo "## estimate_memory for the 7B run"; echo '```'; cat "$LOGS/estimate_7b.log" 2>/dev/null; echo '```'
  echo; echo "## dist engines"; grep -E '^\|' "$LOGS/dist_engines.log" 2>/dev/null
  echo; echo "## pytest -m cuda"; echo '```'; grep -E 'PASSED|FAILED|ERROR|SKIPPED|passed|failed' "$LOGS/pytest_cuda.log" 2>/dev/null | tail -30; echo '```'
  echo; echo "## peft methods / optimizers: the last step each job logged"
  $PY - "$WORK" <<'PY'
import json, sys
from pathlib import Path
for job in sorted(p for group in ("peft", "optim") for p in (Path(sys.argv[1]) / group).glob("*") if p.is_dir()):
    text = (job / "config.yaml").read_text() if (job / "config.yaml").is_file() else ""
    picked = [line.strip() for line in text.splitlines() if line.strip().startswith(("method:", "name: adamw", "name: paged"))]
    steps = [json.loads(l) for l in (job / "metrics.jsonl").read_text().splitlines()] if (job / "metrics.jsonl").is_file() else []
    last = {k: v for k, v in (steps[-1] if steps else {}).items() if k in ("step", "train/loss", "train/mem_gb", "train/tokens_per_s")}
    print(f"- {job.parent.name}/{job.name} {' '.join(picked)}: {last or 'no metrics (see its log)'}")
PY
} >> "$SUMMARY"
cp "$WORK"/compare_*.json "$LOGS"/ 2>/dev/null
tar -czf "$RES/logs.tar.gz" -C "$LOGS" .
note ""; note "total $(( $(date +%s) - START ))s"
