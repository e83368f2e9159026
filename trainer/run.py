"""One training job from a composed config, with input errors shown as one clear line."""
from __future__ import annotations

import os
import sys

from omegaconf import DictConfig

from data.errors import DataError
from trainer.distributed import shutdown_distributed
from trainer.loop import Trainer

# Problems with what the user gave us (a bad line, a missing path, a value outside its
# allowed set): one line, no traceback, unless HYDRA_FULL_ERROR=1 asks for it.
USER_ERRORS = (DataError, FileNotFoundError, ValueError)


def run_training(cfg: DictConfig) -> float | None:
    """Train and return the final dev loss (None without a dev split), the value sweeps optimise."""
    try:
        metrics = Trainer(cfg).train()
    except USER_ERRORS as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        shutdown_distributed()
    return metrics.get("eval/loss")
