"""Where measurements go: `<output_dir>/metrics.jsonl` always, the console on rank 0."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


class MetricsLogger:
    """Rank 0 appends one JSON object per event; other ranks log nothing."""

    def __init__(self, output_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        event = {"step": step, **metrics}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(event, ensure_ascii=False) + "\n")
        tqdm.write(" ".join(f"{k}={_fmt(v)}" for k, v in event.items()))

    def finish(self) -> None:
        """Flush and close whatever the backend holds (nothing for plain files)."""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) and abs(value) >= 1e-3 else f"{value:.3e}"
    return str(value)
