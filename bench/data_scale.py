"""Tokenise and pack a large file with bounded memory, then read it again from the cache.

    python bench/data_scale.py                       # 200k dialogues, tiny tokenizer, rows of 4,096
    python bench/data_scale.py --dialogues 20000 --model smollm2 --seq-len 8192

The file is made here from the hotel train split: copy k of dialogue i has every number in its
turns' text replaced by a random one of the same number of digits (seeded by k and i), so the
copies tokenise to different ids and slightly different lengths. Then two runs, each its own
process timed from start to exit, build the split the way training does (`data.dataset.load_split`:
stream, validate, encode with `data.num_proc` processes into Arrow shards, pack, cache); the first
starts from an empty cache, the second finds it. Two peaks: `os.wait4`'s ru_maxrss (the largest
single process among the run and the encoding workers it waited for) and the sum over the whole
process tree, sampled every 0.2 s with psutil (shared pages count once per process, so it overstates).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HOTEL_TRAIN = ROOT / "data" / "assets" / "hotel" / "train.jsonl"
NUMBER = re.compile(r"\d+")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dialogues", type=int, default=200_000)
    p.add_argument("--model", default="tiny", help="model preset whose tokenizer encodes (tiny, smollm2)")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--num-proc", type=int, default=None, help="data.num_proc (default: every core)")
    p.add_argument("--workdir", default=None, help="default: $TURNPACK_HOME/bench/data_scale")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    home = Path(os.path.expanduser(os.environ.get("TURNPACK_HOME", "~/.cache/turnpack")))
    args.workdir = Path(args.workdir or home / "bench" / "data_scale")
    return args


def perturb(value, rng: random.Random):
    """Every number inside strings replaced by a random one of as many digits."""
    if isinstance(value, str):
        return NUMBER.sub(lambda m: str(rng.randrange(10 ** (len(m.group()) - 1) if len(m.group()) > 1 else 0,
                                                      10 ** len(m.group()))), value)
    if isinstance(value, list):
        return [perturb(v, rng) for v in value]
    if isinstance(value, dict):
        return {k: perturb(v, rng) for k, v in value.items()}
    return value


def make_file(path: Path, count: int) -> None:
    """`count` dialogues: the hotel train split repeated, every copy after the first perturbed."""
    if path.is_file() and sum(1 for _ in path.open("rb")) == count:
        return
    base = [json.loads(line) for line in HOTEL_TRAIN.read_text(encoding="utf-8").splitlines() if line.strip()]
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for n in range(count):
            copy, i = divmod(n, len(base))
            record = base[i] if copy == 0 else perturb(base[i], random.Random(copy * 1_000_003 + i))
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.rename(path)


def child(args: argparse.Namespace) -> None:
    """One build of the split, as training does it; prints its report line and the phase timings."""
    from data.dataset import load_split
    from data.templates import get_template
    from models.loading import load_tokenizer
    from bench.compare_hf import compose

    overrides = [f"model={args.model}", f"data.train={args.workdir / 'dialogues.jsonl'}",
                 f"data.cache_dir={args.workdir / 'cache'}", f"train.seq_len={args.seq_len}"]
    if args.num_proc:
        overrides.append(f"data.num_proc={args.num_proc}")
    cfg = compose(overrides)
    tokenizer = load_tokenizer(cfg.model)
    start = time.perf_counter()
    split = load_split(cfg.data.train, cfg.data, get_template(cfg.model.template, cfg.model.tool_format),
                       tokenizer, args.seq_len)
    row = split.row(len(split) - 1)  # rows read back from the cache
    print(json.dumps({"load_split_s": time.perf_counter() - start, "report": split.report("train"),
                      "rows": len(split), "efficiency": split.stats.efficiency,
                      "last_row_tokens": len(row["input_ids"])}))


def run_child(args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", "--dialogues", str(args.dialogues), "--model", args.model,
           "--seq-len", str(args.seq_len), "--workdir", str(args.workdir),
           *(["--num-proc", str(args.num_proc)] if args.num_proc else [])]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    tree_peak = [0]
    sampler = threading.Thread(target=sample_tree_rss, args=(proc.pid, tree_peak), daemon=True)
    sampler.start()
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    sampler.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the build failed (exit {os.waitstatus_to_exitcode(status)}): {output[-2000:]}")
    result = json.loads(output.strip().splitlines()[-1])
    return result | {"process_s": wall, "peak_rss_gib": usage.ru_maxrss / 2**20, "tree_rss_gib": tree_peak[0] / 2**30}


def sample_tree_rss(pid: int, peak: list[int]) -> None:
    """Largest summed RSS of `pid` and its descendants until it exits."""
    try:
        root = psutil.Process(pid)
        while root.status() != psutil.STATUS_ZOMBIE:
            total = 0
            for p in [root, *root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            peak[0] = max(peak[0], total)
            time.sleep(0.2)
    except psutil.NoSuchProcess:
        pass


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.child:
        child(args)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = args.workdir / "dialogues.jsonl"
    start = time.perf_counter()
    make_file(data, args.dialogues)
    print(f"{data}: {args.dialogues:,} dialogues, {data.stat().st_size / 2**20:,.0f} MiB "
          f"(made in {time.perf_counter() - start:.0f} s)", flush=True)
    shutil.rmtree(args.workdir / "cache", ignore_errors=True)
    results = {"first": run_child(args), "cached": run_child(args)}
    print(results["first"]["report"])
    print("| run | process wall s | load_split s | peak RSS, largest process GiB | peak RSS, all processes GiB |\n"
          "|---|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['process_s']:.1f} | {r['load_split_s']:.2f} | {r['peak_rss_gib']:.2f} "
              f"| {r['tree_rss_gib']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args) | {"workdir": str(args.workdir)},
                                               "results": results}, indent=1))


if __name__ == "__main__":
    main()
