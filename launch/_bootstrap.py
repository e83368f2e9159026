"""Shared by the entry points: make the checkout importable, register the config schema, and keep
bitsandbytes' hub probe quiet."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from trainer.config import register_configs  # noqa: E402

register_configs()
# bitsandbytes (0.50, CPUs with AVX512-BF16) tries on import to fetch a CPU kernel from the Hugging Face hub
# (`kernels-community`) and, when that fails (offline, or remote code not trusted), warns on every start, asking
# to trust remote code. Nothing here asked for that kernel; its own fallback is what runs. Only that
# warning is dropped; bitsandbytes' other warnings pass.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward from kernels-community"))
CONFIG_PATH = str(ROOT / "conf")
