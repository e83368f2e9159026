"""The `eval` and `chat` config groups: what `conf/eval/*.yaml` and `chat.*` may set."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

EVALUATIONS = ("hotel", "truthfulqa", "loss")


@dataclass
class EvalConfig:
    name: str = "hotel"  # hotel (turn-by-turn function calling) | truthfulqa (MC1/MC2) | loss
    split: str = "test"  # data split for hotel, loss and compare_base: train | dev | test
    batch_size: int = 16  # prompts (or scored sequences) per forward pass
    max_new_tokens: int = 256  # per generated turn
    do_sample: bool = False  # greedy unless true
    temperature: float = 1.0  # with do_sample
    top_p: float = 1.0  # with do_sample
    subset: int = 0  # first N turns (TruthfulQA: questions); 0 = all. In training: dev turns per generation eval
    predictions: Optional[str] = None  # re-score this predictions.jsonl; no model is loaded
    compare_base: bool = False  # also write compare.md: base vs tuned replies on the first compare_n turns
    compare_n: int = 10
    truthfulqa: str = "${project_root:}/data/assets/truthfulqa/mc_task.json"
    model_name: Optional[str] = None  # the table's Model column (default: model.name)
    method: Optional[str] = None  # the table's Method column (default: LoRA / Full FT / Prompt, from the checkpoint)


@dataclass
class ChatConfig:
    script: Optional[str] = None  # a file of user lines, one per line: run them and print the transcript
    db: str = "${project_root:}/data/assets/hotel/hotel_db.json"  # what search_hotels queries
    max_calls: int = 3  # function calls the model may make before it must answer one user line
