"""PNG curves from runs' `metrics.jsonl`: loss (train and eval), learning rate, grad norm and tokens/s
against step, one file per quantity, several runs overlaid in one colour each."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

# file name → (title, [(metric, line style)]); a chart with several series names them in its title
CHARTS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "loss": ("loss: train (solid), eval (dashed)", [("train/loss", ".-"), ("eval/loss", "o--")]),
    "lr": ("learning rate", [("train/lr", ".-")]),
    "grad_norm": ("grad norm (before clipping)", [("train/grad_norm", ".-")]),
    "tokens_per_s": ("tokens/s", [("train/tokens_per_s", ".-")]),
}
_LONG_FLOAT = re.compile(r"\d+\.\d{5,}(e-?\d+)?")


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (not a run directory)")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_label(run_dir: Path) -> str:
    """`logger.name` from the run's config.yaml (a sweep job's overrides, long floats shortened),
    else the directory's name."""
    config = Path(run_dir) / "config.yaml"
    name = OmegaConf.select(OmegaConf.load(config), "logger.name") if config.is_file() else None
    return _LONG_FLOAT.sub(lambda m: f"{float(m.group()):.4g}", name) if name else Path(run_dir).resolve().name


def plot_runs(run_dirs: Sequence[Path], out_dir: Path) -> list[Path]:
    """Write `<out_dir>/<chart>.png` for every chart some run has data for; returns the files."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe in any process

    runs = [(run_label(d), read_metrics(d)) for d in run_dirs]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for chart, (title, series) in CHARTS.items():
        fig = Figure(figsize=(7, 4.5), layout="constrained")
        ax = fig.add_subplot()
        for i, (label, events) in enumerate(runs):
            for key, style in series:
                points = [(e["step"], e[key]) for e in events if key in e]
                if points:
                    ax.plot(*zip(*points), style, color=f"C{i % 10}", markersize=4,
                            label=label if key == series[0][0] else None)
        if not ax.lines:
            continue
        ax.set(xlabel="step", title=title)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            fig.legend(loc="outside lower center", fontsize="small", ncols=1 if len(runs) < 5 else 2)
        path = out_dir / f"{chart}.png"
        fig.savefig(path, dpi=110)
        written.append(path)
    return written
