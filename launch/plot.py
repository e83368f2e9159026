"""Plot runs: `python launch/plot.py <output_dir>... [--out DIR]`.

One run directory: its curves go to `<output_dir>/plots/`. Several (or a sweep directory, whose job
directories are taken in order): overlaid, in `<their common parent>/plots/` unless `--out` says where.
"""
import argparse
import os
import sys
from pathlib import Path

import _bootstrap  # noqa: F401  (makes the checkout importable)

from trainer.plots import plot_runs


def run_dirs(paths: list[Path]) -> list[Path]:
    """The given run directories, a sweep directory standing for the runs under it."""
    found = []
    for path in paths:
        jobs = sorted((p.parent for p in path.glob("*/metrics.jsonl")), key=lambda p: (len(p.name), p.name))
        found += jobs if jobs and not (path / "metrics.jsonl").is_file() else [path]  # else plot_runs names it
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run output directories (or sweep directories)")
    parser.add_argument("--out", type=Path, help="where the PNGs go (default: see above)")
    args = parser.parse_args()
    dirs = run_dirs(args.dirs)
    out = args.out or (dirs[0] if len(dirs) == 1 else Path(os.path.commonpath([d.resolve() for d in dirs]))) / "plots"
    try:
        written = plot_runs(dirs, out)
    except FileNotFoundError as err:
        sys.exit(f"error: {err}")
    print("\n".join(str(p) for p in written))


if __name__ == "__main__":
    main()
