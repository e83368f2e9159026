"""Dialogues → one evaluation item per assistant-side turn, and the model's prediction for each.

A turn's prompt is the gold history before it rendered with the generation prompt, which
is byte for byte what training put before that turn's body (the templates' invariant), so
the model is asked exactly what it was taught to answer.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from data.config import DataConfig
from data.conversation import Message
from data.dataset import load_tools
from data.formats import read_conversations
from data.templates import ChatTemplate
from eval.generate import GenerationSettings, TurnGenerator, model_generator
from eval.hotel import CALL, TEXT, as_turn, score_turn, slot_prf


@dataclass(frozen=True)
class Turn:
    prompt: str  # rendered gold history + generation prompt
    reference: dict[str, Any]  # the gold turn as a record (eval.hotel.as_turn)
    source: str  # "path:line" of the dialogue
    index: int  # the turn's position in the dialogue's messages
    user: str  # the latest user message before the turn, for side-by-side reports
    history: tuple[Message, ...]  # the gold messages before the turn, which `prompt` renders
    tools: tuple[dict, ...]  # the tools offered in the dialogue


def load_turns(path: str, data: DataConfig, template: ChatTemplate, limit: int = 0) -> list[Turn]:
    """Every assistant reply and call of a data file (the first `limit` when > 0), read as training reads it."""
    conversations = read_conversations(path, data.format, tools=load_tools(data.tools), system=data.system,
                                       columns=dict(data.columns), filter_column=data.filter_column)
    turns = []
    for conv in conversations:
        user = ""
        for k, msg in enumerate(conv.messages):
            if msg.role == "user":
                user = msg.content
            if msg.role != "assistant":
                continue
            prompt = template.prompt(conv.messages[:k], conv.tools)
            turns.append(Turn(prompt, as_turn(msg), conv.source, k, user, tuple(conv.messages[:k]), tuple(conv.tools)))
            if len(turns) == limit:
                return turns
    return turns


def predict_turns(generate: TurnGenerator, turns: Sequence[Turn], desc: str | None = None) -> list[dict[str, Any]]:
    """Generate every turn (in process or through a server) and classify it.

    Each record is a predictions.jsonl line: source, turn, reference, prediction, raw text.
    """
    generated = generate([(t.history, t.tools) for t in turns], desc)
    return [{"source": t.source, "turn": t.index, "reference": t.reference, "prediction": as_turn(g.message),
             "raw": g.raw} for t, g in zip(turns, generated)]


def task_metrics(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, template: ChatTemplate,
                 turns: Sequence[Turn], settings: GenerationSettings,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> dict[str, float]:
    """Slot F1 and mean sentence BLEU-4 of this rank's `turns`, summed over ranks by `reduce`.

    What training logs as eval/slot_f1 and eval/bleu4; a metric with no turns of its kind
    on any rank is left out.
    """
    records = predict_turns(model_generator(model, tokenizer, template, settings, autocast), turns)
    scores = [score_turn(r["reference"], r["prediction"]) for r in records]
    calls = [s for s in scores if s.reference == "call"]
    texts = [s for s in scores if s.reference == "text"]
    sums = torch.tensor([sum(s.slot_correct for s in calls), sum(s.slot_predicted for s in calls),
                         sum(s.slot_gold for s in calls), len(calls), sum(s.bleu4 for s in texts), len(texts)],
                        dtype=torch.float64)
    correct, predicted, gold, n_calls, bleu_sum, n_texts = reduce(sums).tolist()
    metrics = {}
    if n_calls:
        metrics["slot_f1"] = slot_prf(correct, predicted, gold)[2]
    if n_texts:
        metrics["bleu4"] = bleu_sum / n_texts
    return metrics


def turn_text(turn: dict, limit: int = 300) -> str:
    """One markdown line for a turn record; a runaway generation is cut (predictions.jsonl has it whole)."""
    role = turn["role"]
    text = (f"{turn.get('name', 'search')} {json.dumps(turn['arguments'], ensure_ascii=False)}" if role == CALL
            else turn["content"].replace("\n", " "))
    if len(text) > limit:
        text = f"{text[:limit]} … ({len(text) - limit} more characters)"
    return {CALL: f"`{text}`", TEXT: text}.get(role, f"(invalid call) `{text}`")


def before_after(title: str, turns: Sequence[Turn], before: Sequence[dict], after: Sequence[dict],
                 labels: tuple[str, str] = ("Base", "Tuned")) -> str:
    """Markdown: each turn's user line, reference, and the two predictions (records of `predict_turns`)."""
    lines = [f"# {title}", ""]
    for n, (turn, first, second) in enumerate(zip(turns, before, after), 1):
        lines += [f"## {n}. {turn.source}, turn {turn.index}", "", f"- **User:** {turn.user}",
                  f"- **Reference:** {turn_text(turn.reference)}",
                  f"- **{labels[0]}:** {turn_text(first['prediction'])}",
                  f"- **{labels[1]}:** {turn_text(second['prediction'])}", ""]
    return "\n".join(lines)
