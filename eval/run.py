"""`launch/evaluate.py` and `launch/chat.py`: find what a checkpoint was trained with, load it, run.

A checkpoint (`<run>/final`, `<run>/checkpoints/step_N`) holds weights (adapter or full)
and tokenizer; the run's resolved `config.yaml` sits in a parent and names the model,
template, tool format, data, tools and system prompt. Those sections are taken from it,
then whatever the command line set wins, so `data.test=other.jsonl` or `model.path=...`
work as expected.
"""
from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from data.dataset import load_split, load_tools
from data.errors import DataError
from data.packing import collate_rows
from data.templates import ChatTemplate, get_template
from eval import hotel, truthfulqa
from eval.chat import ChatSession, format_event
from eval.config import EVALUATIONS
from eval.generate import GenerationSettings, TurnGenerator, model_generator
from eval.hotel_db import load_db
from eval.loss import evaluate_loss
from eval.served import ServedGenerator
from eval.turns import before_after, load_turns, predict_turns
from models.adapters import peft_method, quantization_config
from models.export import run_config
from models.loading import load_model, load_tokenizer

SAVED_SECTIONS = ("model", "peft", "data", "train")  # taken from the run's config.yaml
# The results table's Method column for an adapter, by adapter_config.json's peft_type.
PEFT_NAMES = {"LORA": "LoRA", "IA3": "IA3", "PROMPT_TUNING": "Prompt tuning", "P_TUNING": "P-tuning",
              "PREFIX_TUNING": "Prefix tuning"}


# ---- configuration ------------------------------------------------------------------------

def resolve_config(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """The composed config with the checkpoint's run config under the command-line `overrides`.

    A group chosen on the command line (`model=qwen2`) replaces the saved section whole; a
    key (`data.test=...`) replaces that key. Saved keys this version no longer has are ignored.
    """
    if not cfg.checkpoint:
        return cfg
    checkpoint = Path(cfg.checkpoint)
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"checkpoint={cfg.checkpoint}: not a directory")
    saved = run_config(checkpoint)
    if saved is None:
        return cfg
    given = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    resolved = cfg.copy()
    for section in SAVED_SECTIONS:
        if section in given or section not in saved:
            continue
        known = {k: v for k, v in saved[section].items() if k in resolved[section]}
        resolved[section] = OmegaConf.merge(resolved[section], known)
    for key in given:
        if key.split(".", 1)[0] in SAVED_SECTIONS and "." in key:
            OmegaConf.update(resolved, key, OmegaConf.select(cfg, key), merge=False)
    return resolved


def output_dir(cfg: DictConfig) -> Path:
    """`output_dir`, else the predictions file's folder (re-scoring), else `<checkpoint>/eval/<name>[_<split>]`."""
    if cfg.output_dir:
        return Path(cfg.output_dir)
    if cfg.eval.predictions:
        return Path(cfg.eval.predictions).parent
    if cfg.checkpoint:
        name = cfg.eval.name if cfg.eval.name == "truthfulqa" else f"{cfg.eval.name}_{cfg.eval.split}"
        return Path(cfg.checkpoint) / "eval" / name
    raise ValueError("output_dir= is required when no checkpoint= is given")


def split_path(cfg: DictConfig) -> str:
    path = cfg.data.get(cfg.eval.split) if cfg.eval.split in ("train", "dev", "test") else None
    if not path:
        raise ValueError(f"eval.split={cfg.eval.split!r}: data.{cfg.eval.split} is not set (train | dev | test)")
    return path


# ---- models -------------------------------------------------------------------------------

@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer: Any
    method: str  # LoRA, QLoRA, ... | Full FT | Prompt (no checkpoint): the results table's Method column


def _adapter_method(adapter_cfg: dict[str, Any], quantized: bool) -> str:
    if adapter_cfg.get("use_dora"):
        return "QDoRA" if quantized else "DoRA"
    name = PEFT_NAMES.get(adapter_cfg.get("peft_type"), str(adapter_cfg.get("peft_type", "adapter")))
    return f"Q{name}" if quantized else name


def _device(name: str) -> torch.device:
    use_cuda = torch.cuda.is_available() if name == "auto" else name == "cuda"
    return torch.device("cuda" if use_cuda else "cpu")


def _at(model_cfg: DictConfig, path: str | Path) -> DictConfig:
    return OmegaConf.merge(model_cfg, {"path": str(path)})


def load_for_inference(cfg: DictConfig) -> Loaded:
    """The checkpoint's model and tokenizer (an adapter on its base), or the base model without one."""
    device = _device(cfg.train.device)
    if not cfg.checkpoint:
        return Loaded(load_model(cfg.model, device=device).eval(), load_tokenizer(cfg.model), "Prompt")
    checkpoint = Path(cfg.checkpoint).resolve()
    tokenizer = load_tokenizer(_at(cfg.model, checkpoint))
    adapter = checkpoint / "adapter_config.json"
    if adapter.is_file():
        from peft import PeftModel

        adapter_cfg = json.loads(adapter.read_text(encoding="utf-8"))
        base = adapter_cfg.get("base_model_name_or_path")
        base_cfg = _at(cfg.model, base) if base and Path(base).is_dir() else cfg.model
        quantization = quantization_config(cfg.peft)  # a QLoRA adapter is evaluated on its 4-bit base
        model = PeftModel.from_pretrained(load_model(base_cfg, device=device, quantization=quantization), checkpoint)
        method = _adapter_method(adapter_cfg, quantization is not None)
    elif (checkpoint / "config.json").is_file():
        model, method = load_model(_at(cfg.model, checkpoint), device=device), "Full FT"
    else:
        raise FileNotFoundError(f"checkpoint={cfg.checkpoint}: neither adapter_config.json nor config.json there")
    return Loaded(model.eval(), tokenizer, method)


def served_generator(cfg: DictConfig) -> tuple[ServedGenerator, ChatTemplate]:
    """The server at `serve.url` behind the `TurnGenerator` interface, and the run's template (which parses a
    reply the server did not read as a call); no model is loaded, only a tokenizer for `model.template=auto`."""
    tokenizer = None
    if cfg.model.template == "auto":
        tokenizer = load_tokenizer(_at(cfg.model, Path(cfg.checkpoint).resolve()) if cfg.checkpoint else cfg.model)
    template = get_template(cfg.model.template, cfg.model.tool_format, tokenizer)
    generator = ServedGenerator(cfg.serve.url, cfg.serve.model, GenerationSettings.from_config(cfg.eval),
                                template.parse_reply, cfg.serve.api_key)
    return generator, template


@contextlib.contextmanager
def base_model(loaded: Loaded, cfg: DictConfig) -> Iterator[torch.nn.Module]:
    """The model before fine-tuning: the adapter switched off, or the run's base weights loaded."""
    if hasattr(loaded.model, "disable_adapter"):
        with loaded.model.disable_adapter():
            yield loaded.model
    else:
        yield load_model(cfg.model, device=next(loaded.model.parameters()).device).eval()


# ---- outputs ------------------------------------------------------------------------------

def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_metrics(out: Path, metrics: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def read_predictions(path: str | Path) -> list[dict]:
    """A predictions.jsonl, each line checked; a bad line raises DataError naming line and field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), None, None, "file not found (eval.predictions)")
    records = []
    for line, text in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(str(path), line, None, f"invalid JSON: {err.msg}") from None
        for field, is_reference in (("reference", True), ("prediction", False)):
            try:
                hotel.check_turn(record.get(field) if isinstance(record, dict) else None, is_reference)
            except ValueError as err:
                raise DataError(str(path), line, field, str(err)) from None
        records.append(record)
    if not records:
        raise DataError(str(path), None, None, "no predictions")
    return records


def report_hotel(records: Sequence[dict], out: Path, model: str, method: str, info: dict[str, Any],
                 write_predictions: bool = True) -> dict[str, Any]:
    """Score, write predictions.jsonl (with per-turn scores) and metrics.json, print the table."""
    metrics, scores = hotel.summarize(records)
    if write_predictions:
        write_jsonl(out / "predictions.jsonl", (hotel.scored_record(r, s) for r, s in zip(records, scores)))
    result = {"eval": "hotel", "model": model, "method": method, **info, **metrics}
    write_metrics(out, result)
    print(hotel.results_table([(model, method, metrics)]))
    print(hotel.details(metrics))
    print(f"wrote {out}")
    return result


# ---- evaluations --------------------------------------------------------------------------

def rescore(cfg: DictConfig) -> dict[str, Any]:
    """Score a predictions file without any model: other systems' outputs are scored the same way."""
    path = Path(cfg.eval.predictions)
    records = read_predictions(path)
    return report_hotel(records, output_dir(cfg), cfg.eval.model_name or path.parent.name, cfg.eval.method or "–",
                        {"predictions": str(path)}, write_predictions=False)


def evaluate_hotel(cfg: DictConfig, generate: TurnGenerator, template: ChatTemplate, labels: tuple[str, str]) -> dict:
    path = split_path(cfg)
    turns = load_turns(path, cfg.data, template, cfg.eval.subset)
    records = predict_turns(generate, turns, desc=f"generating {len(turns)} {cfg.eval.split} turns")
    info = {"split": cfg.eval.split, "data": path, "checkpoint": cfg.checkpoint,
            "generation": OmegaConf.to_container(cfg.eval, resolve=True)}
    if cfg.serve.url:
        info["server"] = {"url": cfg.serve.url, "model": generate.model}
    return report_hotel(records, output_dir(cfg), *labels, info)


def evaluate_mc(cfg: DictConfig, loaded: Loaded, labels: tuple[str, str]) -> dict:
    questions = truthfulqa.load_questions(cfg.eval.truthfulqa, cfg.eval.subset)
    scorer = truthfulqa.model_scorer(loaded.model, loaded.tokenizer, cfg.eval.batch_size)
    metrics, records = truthfulqa.evaluate_truthfulqa(questions, scorer)
    out = output_dir(cfg)
    write_jsonl(out / "predictions.jsonl", records)
    result = {"eval": "truthfulqa", "model": labels[0], "method": labels[1], "data": cfg.eval.truthfulqa,
              "checkpoint": cfg.checkpoint, **metrics}
    write_metrics(out, result)
    print(f"| Model | Method | MC1 | MC2 |\n|---|---|---|---|\n"
          f"| {labels[0]} | {labels[1]} | {metrics['mc1']:.2f} | {metrics['mc2']:.2f} |")
    print(f"{metrics['questions']} questions; wrote {out}")
    return result


def _loss_batches(split, pad_id: int, batch_size: int, packs: bool,
                  device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    for start in tqdm(range(0, len(split), batch_size), desc="loss", dynamic_ncols=True):
        rows = [split.row(i) for i in range(start, min(start + batch_size, len(split)))]
        yield {k: v.to(device) for k, v in collate_rows(rows, pad_id, attention_mask=not packs).items()}


def evaluate_split_loss(cfg: DictConfig, loaded: Loaded, template: ChatTemplate, labels: tuple[str, str]) -> dict:
    """Loss as training's dev loss computes it: rows packed unless the peft method cannot pack."""
    path = split_path(cfg)
    packs = peft_method(cfg.peft).packs
    split = load_split(path, cfg.data, template, loaded.tokenizer, cfg.train.seq_len, None if packs else False)
    device = next(loaded.model.parameters()).device
    metrics = evaluate_loss(loaded.model, _loss_batches(split, loaded.tokenizer.pad_token_id, cfg.eval.batch_size,
                                                        packs, device))
    result = {"eval": "loss", "model": labels[0], "method": labels[1], "split": cfg.eval.split, "data": path,
              "checkpoint": cfg.checkpoint, **metrics}
    write_metrics(output_dir(cfg), result)
    print(f"{cfg.eval.split}: loss {metrics['loss']:.4f}, perplexity {metrics['perplexity']:.2f} "
          f"over {metrics['tokens']:,} trained tokens; wrote {output_dir(cfg)}")
    return result


def compare_with_base(cfg: DictConfig, loaded: Loaded, template: ChatTemplate, labels: tuple[str, str]) -> Path:
    """compare.md: the base and the tuned model's replies to the first `eval.compare_n` turns (seed 001)."""
    turns = load_turns(split_path(cfg), cfg.data, template, cfg.eval.compare_n)
    settings = GenerationSettings.from_config(cfg.eval)
    tuned = predict_turns(model_generator(loaded.model, loaded.tokenizer, template, settings), turns, desc="tuned")
    with base_model(loaded, cfg) as before:
        base = predict_turns(model_generator(before, loaded.tokenizer, template, settings), turns, desc="base")
    title = f"Before and after fine-tuning: {labels[0]} ({labels[1]}), first {len(turns)} {cfg.eval.split} turns"
    path = output_dir(cfg) / "compare.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(before_after(title, turns, base, tuned), encoding="utf-8")
    print(f"wrote {path}")
    return path


def run_evaluation(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """What `launch/evaluate.py` does: re-score a predictions file, or load the checkpoint and evaluate."""
    if cfg.eval.name not in EVALUATIONS:
        raise ValueError(f"eval.name={cfg.eval.name!r}; allowed: {', '.join(EVALUATIONS)}")
    if cfg.eval.predictions:
        return rescore(cfg)
    if cfg.eval.compare_base and not cfg.checkpoint:
        raise ValueError("eval.compare_base needs checkpoint=: without one the model already is the base")
    cfg = resolve_config(cfg, overrides)
    if cfg.serve.url:
        if cfg.eval.name != "hotel" or cfg.eval.compare_base:
            raise ValueError(f"serve.url: a server is evaluated with eval=hotel only (eval.name={cfg.eval.name}, "
                             f"eval.compare_base={cfg.eval.compare_base} need the model in process)")
        generate, template = served_generator(cfg)
        labels = (cfg.eval.model_name or cfg.model.name, cfg.eval.method or "Served")
        return evaluate_hotel(cfg, generate, template, labels)
    torch.manual_seed(cfg.train.seed)  # only sampling draws random numbers
    loaded = load_for_inference(cfg)
    template = get_template(cfg.model.template, cfg.model.tool_format, loaded.tokenizer)
    labels = (cfg.eval.model_name or cfg.model.name, cfg.eval.method or loaded.method)
    if cfg.eval.name == "hotel":
        settings = GenerationSettings.from_config(cfg.eval)
        result = evaluate_hotel(cfg, model_generator(loaded.model, loaded.tokenizer, template, settings), template,
                                labels)
    elif cfg.eval.name == "truthfulqa":
        result = evaluate_mc(cfg, loaded, labels)
    else:
        result = evaluate_split_loss(cfg, loaded, template, labels)
    if cfg.eval.compare_base:
        compare_with_base(cfg, loaded, template, labels)
    return result


# ---- chat ---------------------------------------------------------------------------------

def run_chat(cfg: DictConfig, overrides: Sequence[str] = (), read_line: Callable[[str], str] = input,
             write: Callable[[str], None] = print) -> ChatSession:
    """`launch/chat.py`: chat in the terminal, or run `chat.script` (one user line per line) and print it;
    with the model in process, or the one served at `serve.url`."""
    cfg = resolve_config(cfg, overrides)
    db = load_db(cfg.chat.db)
    if cfg.serve.url:
        generate: TurnGenerator = served_generator(cfg)[0]
    else:
        loaded = load_for_inference(cfg)
        template = get_template(cfg.model.template, cfg.model.tool_format, loaded.tokenizer)
        generate = model_generator(loaded.model, loaded.tokenizer, template, GenerationSettings.from_config(cfg.eval))
    session = ChatSession(generate, load_tools(cfg.data.tools), db, cfg.data.system, cfg.chat.max_calls)
    if cfg.chat.script:
        script = Path(cfg.chat.script)
        if not script.is_file():
            raise DataError(str(script), None, None, "file not found (chat.script)")
        lines: Iterable[str] = (line for line in script.read_text(encoding="utf-8").splitlines() if line.strip())
    else:
        write("Chat with the model: /reset starts over, /exit (or Ctrl-D) quits.")
        lines = _interactive(read_line)
    for line in lines:
        if line.strip() == "/reset":
            session.reset()
            continue
        if cfg.chat.script:
            write(f"user: {line}")
        for event in session.send(line):
            write(format_event(event))
    return session


def _interactive(read_line: Callable[[str], str]) -> Iterator[str]:
    while True:
        try:
            line = read_line("user> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return
        if line.strip() == "/exit":
            return
        if line.strip():
            yield line
