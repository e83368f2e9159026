"""Seed 000 §11.7's metrics for a function-calling chatbot, on turns already predicted.

Pure functions over turn records, so other systems' outputs are scored by the same code:

- a reference turn is `{"role": "search", "arguments": {...}}` (a call) or
  `{"role": "assistant", "content": "..."}` (a reply);
- a prediction has the same shape, or `{"role": "invalid", "content": "<raw text>"}` for a
  call the template could not parse. A `search` whose `arguments` is a string is decoded
  here: not a JSON object means invalid. Several calls in one turn: `arguments` is a list.

Slots: a call's arguments become items, one per scalar key and one per element of a list
value; numbers compare numerically (500 == 500.0), strings exactly after trimming, and a
turn's correct items are the multiset intersection of predicted and gold items. Precision,
recall and F1 are micro-averaged over the turns whose reference is a call: a call answered
with text adds its gold items to recall's denominator and predicts nothing; an invalid call
predicts nothing and counts in `invalid_call_rate` (invalid / all predicted calls).

BLEU-4 on reply turns: the mean of nltk's sentence BLEU-4 × 100 on characters (whitespace
dropped; Chinese has no word boundaries) with smoothing method 3, as ChatGLM's and the
seed course's scripts compute it, plus sacrebleu's corpus BLEU (`tokenize="zh"`). A reply
turn answered with a call scores 0 (and contributes an empty hypothesis to corpus BLEU).

Every score is a percentage; a ratio with a zero denominator is 0, and a metric with no
turns to average over (no call turns, no reply turns) is None.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

from data.conversation import Message

CALL, TEXT, INVALID = "search", "assistant", "invalid"
KINDS = ("call", "text")  # rows/columns of the confusion counts
TABLE_HEADER = ("Model", "Method", "BLEU-4", "SLOT-P", "SLOT-R", "SLOT-F1")


# ---- turn records -----------------------------------------------------------------------

def as_turn(msg: Message) -> dict[str, Any]:
    """A gold or parsed turn as a record: call, reply, or invalid (what `parse_reply` gives)."""
    if msg.role == INVALID:
        return {"role": INVALID, "content": msg.content}
    if msg.tool_calls:
        arguments = [c.arguments for c in msg.tool_calls]
        return {"role": CALL, "name": msg.tool_calls[0].name,
                "arguments": arguments[0] if len(arguments) == 1 else arguments}
    return {"role": TEXT, "content": msg.content}


def _call_arguments(arguments: Any) -> list[dict] | None:
    """The argument objects of a call, or None when they are not JSON objects."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    objects = arguments if isinstance(arguments, list) else [arguments]
    return objects if objects and all(isinstance(o, dict) for o in objects) else None


def check_turn(turn: Any, reference: bool) -> None:
    """Raise ValueError naming what is wrong with a reference or prediction record."""
    roles = (CALL, TEXT) if reference else (CALL, TEXT, INVALID)
    if not isinstance(turn, dict) or turn.get("role") not in roles:
        raise ValueError(f"must be an object with role {' | '.join(roles)}")
    if turn["role"] == CALL:
        if "arguments" not in turn:
            raise ValueError("a search turn needs 'arguments'")
        if reference and _call_arguments(turn["arguments"]) is None:
            raise ValueError("a reference call's arguments must be a JSON object")
    elif not isinstance(turn.get("content"), str):
        raise ValueError(f"a {turn['role']} turn needs string 'content'")


# ---- slots and BLEU ---------------------------------------------------------------------

def _slot_value(value: Any) -> tuple[str, Any]:
    """A comparable value: numbers by value, strings trimmed, anything else by its JSON."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "number", float(value)
    if isinstance(value, str):
        return "string", value.strip()
    return "json", json.dumps(value, ensure_ascii=False, sort_keys=True)


def slot_items(arguments: dict | Sequence[dict]) -> Counter:
    """The multiset of (key, value) items: one per scalar key, one per element of a list value."""
    items: Counter = Counter()
    for obj in [arguments] if isinstance(arguments, dict) else arguments:
        for key, value in obj.items():
            for element in value if isinstance(value, list) else [value]:
                items[(key, *_slot_value(element))] += 1
    return items


def bleu_tokens(text: str) -> list[str]:
    """Characters without whitespace: BLEU on Chinese is character-level."""
    return [c for c in text if not c.isspace()]


def sentence_bleu4(reference: str, hypothesis: str) -> float:
    """nltk sentence BLEU-4 × 100 on characters with smoothing method 3."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    return 100.0 * sentence_bleu([bleu_tokens(reference)], bleu_tokens(hypothesis),
                                 smoothing_function=SmoothingFunction().method3)


def corpus_bleu4(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """sacrebleu corpus BLEU with its Chinese tokenizer (CJK characters split)."""
    import sacrebleu

    return sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize="zh").score


# ---- one turn, then a set of turns --------------------------------------------------------

@dataclass
class TurnScore:
    reference: str  # call | text
    predicted: str  # call | text (an invalid call is a call)
    invalid: bool = False
    slot_correct: int = 0  # call references only
    slot_predicted: int = 0
    slot_gold: int = 0
    bleu4: float | None = None  # text references only


def score_turn(reference: dict, prediction: dict) -> TurnScore:
    """Score one prediction against its reference (both records as in the module docstring)."""
    predicted_args = _call_arguments(prediction["arguments"]) if prediction["role"] == CALL else None
    invalid = prediction["role"] == INVALID or (prediction["role"] == CALL and predicted_args is None)
    predicted = "text" if prediction["role"] == TEXT else "call"
    if reference["role"] == CALL:
        gold = slot_items(_call_arguments(reference["arguments"]))
        guess = slot_items(predicted_args) if predicted_args else Counter()
        return TurnScore("call", predicted, invalid, sum((gold & guess).values()), sum(guess.values()),
                         sum(gold.values()))
    bleu = sentence_bleu4(reference["content"], prediction["content"]) if predicted == "text" else 0.0
    return TurnScore("text", predicted, invalid, bleu4=bleu)


def _pct(numerator: float, denominator: float) -> float:
    return 100.0 * numerator / denominator if denominator else 0.0


def slot_prf(correct: float, predicted: float, gold: float) -> tuple[float, float, float]:
    """Micro precision, recall and F1 (percent) from summed item counts."""
    precision, recall = _pct(correct, predicted), _pct(correct, gold)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def summarize(records: Sequence[dict]) -> tuple[dict[str, Any], list[TurnScore]]:
    """Metrics over `{"reference", "prediction"}` records, and each turn's score."""
    scores = [score_turn(r["reference"], r["prediction"]) for r in records]
    calls = [s for s in scores if s.reference == "call"]
    texts = [(r, s) for r, s in zip(records, scores) if s.reference == "text"]
    precision, recall, f1 = slot_prf(sum(s.slot_correct for s in calls), sum(s.slot_predicted for s in calls),
                                     sum(s.slot_gold for s in calls))
    confusion = {ref: {pred: sum(s.reference == ref and s.predicted == pred for s in scores) for pred in KINDS}
                 for ref in KINDS}
    predicted_calls = sum(s.predicted == "call" for s in scores)
    invalid = sum(s.invalid for s in scores)
    hypotheses = [r["prediction"]["content"] if s.predicted == "text" else "" for r, s in texts]
    metrics = {
        "turns": len(scores), "call_turns": len(calls), "text_turns": len(texts),
        "slot_precision": precision if calls else None,
        "slot_recall": recall if calls else None,
        "slot_f1": f1 if calls else None,
        "bleu4": sum(s.bleu4 for _, s in texts) / len(texts) if texts else None,
        "corpus_bleu4": corpus_bleu4([r["reference"]["content"] for r, _ in texts], hypotheses) if texts else None,
        "turn_type_accuracy": _pct(confusion["call"]["call"] + confusion["text"]["text"], len(scores)),
        "confusion": confusion,  # reference kind -> predicted kind -> turns
        "invalid_calls": invalid,
        "invalid_call_rate": _pct(invalid, predicted_calls),
    }
    return metrics, scores


def scored_record(record: dict, score: TurnScore) -> dict:
    """A predictions.jsonl line with its turn's scores attached (for reading errors turn by turn)."""
    fields = asdict(score)
    kept = ("slot_correct", "slot_predicted", "slot_gold") if score.reference == "call" else ("bleu4",)
    dropped = {"slot_correct", "slot_predicted", "slot_gold", "bleu4"} - set(kept)
    return record | {"score": {k: v for k, v in fields.items() if k not in dropped}}


# ---- reporting ----------------------------------------------------------------------------

def _cell(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def results_table(rows: Iterable[tuple[str, str, dict[str, Any]]]) -> str:
    """(model, method, metrics) rows in the layout of seed 000's reference table."""
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    for model, method, m in rows:
        cells = [model, method] + [_cell(m[k]) for k in ("bleu4", "slot_precision", "slot_recall", "slot_f1")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def details(metrics: dict[str, Any]) -> str:
    """The numbers beside the table: corpus BLEU, turn types, invalid calls."""
    c = metrics["confusion"]
    return (f"turns {metrics['turns']} (calls {metrics['call_turns']}, replies {metrics['text_turns']}); "
            f"corpus BLEU-4 (sacrebleu zh) {_cell(metrics['corpus_bleu4'])}; "
            f"turn-type accuracy {_cell(metrics['turn_type_accuracy'])}; "
            f"call→call {c['call']['call']}, call→text {c['call']['text']}, "
            f"text→call {c['text']['call']}, text→text {c['text']['text']}; "
            f"invalid calls {metrics['invalid_calls']} ({_cell(metrics['invalid_call_rate'])}% of predicted calls)")
