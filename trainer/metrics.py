"""Where measurements go: `<output_dir>/metrics.jsonl` always, the console, and a W&B run with
`logger=wandb`; on rank 0 only. At the end: `summary.json`, the run's summary and `plots/`."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from tqdm.auto import tqdm

from trainer.config import LOGGER_BACKENDS, WANDB_MODES
from trainer.plots import plot_runs
from trainer.redact import redact, redact_overrides, redacted_config



class MetricsLogger:
    """Rank 0 appends one JSON object per event and mirrors it to the console and the W&B run
    (`run`, None without W&B); other ranks log nothing."""

    def __init__(self, output_dir: Path, enabled: bool, run: Any = None, log_checkpoints: bool = False,
                 plots: bool = True):
        self.enabled, self.plots = enabled, plots
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / "metrics.jsonl"
        self.run = run
        self.log_checkpoints = log_checkpoints

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        event = {"step": step, **metrics}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(event, ensure_ascii=False) + "\n")
        tqdm.write(" ".join(f"{k}={_fmt(v)}" for k, v in event.items()))
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_checkpoint(self, directory: Path, step: int) -> None:
        """Upload a saved checkpoint as a W&B model artifact when `logger.log_checkpoints` asks for it."""
        if not (self.enabled and self.run is not None and self.log_checkpoints):
            return
        import wandb

        artifact = wandb.Artifact(f"checkpoint-{self.run.id}", type="model", metadata={"step": step})
        artifact.add_dir(str(directory))
        self.run.log_artifact(artifact, aliases=["latest", f"step_{step}"])

    def finish(self, summary: dict[str, Any]) -> None:
        """Record the run's final numbers (`summary.json`, W&B summary), close W&B and draw `plots/`."""
        if not self.enabled:
            return
        (self.output_dir / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n",
                                                     encoding="utf-8")
        tqdm.write("summary: " + " ".join(f"{k}={_fmt(v)}" for k, v in summary.items()))
        if self.run is not None:
            self.run.summary.update(summary)
            self.run.finish()
        if self.plots:
            plot_runs([self.output_dir], self.output_dir / "plots")


def open_logger(cfg: DictConfig, output_dir: Path, enabled: bool, extra_config: dict[str, Any]) -> MetricsLogger:
    """The run's logger; with `logger=wandb`, rank 0 starts a W&B run whose config is the redacted
    resolved config, Hydra's override list and `extra_config` (parameter counts)."""
    backend = cfg.logger.backend
    if backend not in LOGGER_BACKENDS:
        raise ValueError(f"logger.backend={backend!r}; allowed: {list(LOGGER_BACKENDS)}")
    if cfg.logger.mode not in WANDB_MODES:
        raise ValueError(f"logger.mode={cfg.logger.mode!r}; allowed: {list(WANDB_MODES)}")
    run = None
    if backend == "wandb" and enabled:
        config = {**redacted_config(cfg), "hydra_overrides": redact_overrides(hydra_overrides()), **extra_config}
        run = start_wandb_run(cfg.logger, Path(output_dir), config)
    return MetricsLogger(output_dir, enabled, run, cfg.logger.log_checkpoints, cfg.logger.plots)


def start_wandb_run(logger_cfg: DictConfig, output_dir: Path, config: dict[str, Any]) -> Any:
    """`wandb.init` into `<output_dir>/wandb/`; W&B's own problems become one-line config errors."""
    import wandb

    # W&B records the command line with the run; if a secret was typed there, record no metadata at all.
    argv_has_secret = redact_overrides(sys.argv[1:]) != sys.argv[1:]
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        return wandb.init(project=logger_cfg.project, entity=logger_cfg.entity, group=redact(logger_cfg.group),
                          name=redact(logger_cfg.name), tags=redact(list(logger_cfg.tags)),
                          mode=wandb_mode(logger_cfg.mode), dir=str(output_dir), config=config,
                          settings=wandb.Settings(x_disable_meta=argv_has_secret))
    except wandb.errors.Error as err:
        raise ValueError(f"logger=wandb: {err} (logger.mode=offline logs without a server)") from None


def wandb_mode(mode: str) -> str:
    """`auto`: $WANDB_MODE if set, else online when W&B finds an API key (environment, settings,
    .netrc), else offline, so air-gapped machines and CI log locally for a later `wandb sync`."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    import wandb

    return "online" if wandb.login(prompt=False, verify=False) else "offline"


def hydra_overrides() -> list[str]:
    """The job's command-line overrides, when Hydra launched it."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def close_failed_run() -> None:
    """Mark the W&B run a failed job left open as failed, so the next job of a sweep starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.run.finish(exit_code=1)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) and abs(value) >= 1e-3 else f"{value:.3e}"
    return str(value)
