"""Shared by the entry points: make the checkout importable and register the config schema."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from trainer.config import register_configs  # noqa: E402

register_configs()
CONFIG_PATH = str(ROOT / "conf")
