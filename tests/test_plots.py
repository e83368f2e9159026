"""Plots: PNG curves of one run or several overlaid, from metrics.jsonl alone."""
import json
import subprocess
import sys

import numpy as np

from conftest import ROOT
from trainer.plots import plot_runs

CHARTS = ["grad_norm.png", "loss.png", "lr.png", "tokens_per_s.png"]


def fake_run(directory, lr: float, name: str | None = None, evals: bool = True):
    """A run directory as the loop leaves it: metrics.jsonl (and config.yaml naming the run)."""
    directory.mkdir(parents=True)
    events = []
    for step in range(1, 11):
        events.append({"step": step, "train/loss": 5 / step ** (lr * 100), "train/lr": lr * min(1, step / 3),
                       "train/grad_norm": 2 / step, "train/tokens_per_s": 900 + 10 * step})
        if evals and step % 5 == 0:
            events.append({"step": step, "eval/loss": 5.5 / step ** (lr * 100)})
    (directory / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if name:
        (directory / "config.yaml").write_text(f"logger:\n  name: {name}\n")
    return directory


def coloured_pixels(png, rgb: tuple[int, int, int]) -> int:
    """Pixels within a small distance of a line colour (matplotlib's C0, C1, ...)."""
    from matplotlib.image import imread

    image = imread(png)[..., :3] * 255
    return int((np.abs(image - np.array(rgb)).sum(axis=-1) < 60).sum())


C0, C1 = (31, 119, 180), (255, 127, 14)


def test_one_run_gets_every_chart_with_its_curves(tmp_path):
    run = fake_run(tmp_path / "run", lr=2e-3)
    written = plot_runs([run], run / "plots")
    assert sorted(p.name for p in written) == CHARTS
    for png in written:
        assert png.stat().st_size > 5000 and coloured_pixels(png, C0) > 200  # a drawn curve, not an empty frame


def test_several_runs_overlay_and_charts_without_data_are_skipped(tmp_path):
    a = fake_run(tmp_path / "sweep" / "0", lr=1e-3, name="optim.lr=0.0010000000001")
    b = fake_run(tmp_path / "sweep" / "1", lr=3e-3, name="optim.lr=0.003", evals=False)
    written = plot_runs([a, b], tmp_path / "plots")
    assert sorted(p.name for p in written) == CHARTS
    loss = tmp_path / "plots" / "loss.png"
    assert coloured_pixels(loss, C0) > 200 and coloured_pixels(loss, C1) > 200  # both runs drawn

    (tmp_path / "no_lr").mkdir()
    (tmp_path / "no_lr" / "metrics.jsonl").write_text(json.dumps({"step": 1, "eval/loss": 3.0}) + "\n")
    assert [p.name for p in plot_runs([tmp_path / "no_lr"], tmp_path / "no_lr" / "plots")] == ["loss.png"]


def test_plot_command_takes_run_or_sweep_directories(tmp_path):
    for n, lr in enumerate([1e-3, 2e-3, 3e-3]):
        fake_run(tmp_path / "sweep" / str(n), lr=lr, name=f"optim.lr={lr}")
    run = subprocess.run([sys.executable, "launch/plot.py", str(tmp_path / "sweep")], cwd=ROOT, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "sweep" / "plots").iterdir()) == CHARTS  # overlaid in the sweep dir
    bad = subprocess.run([sys.executable, "launch/plot.py", str(tmp_path / "sweep" / "0"), str(tmp_path / "nope")],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0
    assert bad.stderr.strip() == f"error: {tmp_path / 'nope'}: no metrics.jsonl (not a run directory)"
