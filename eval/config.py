"""The `eval` and `chat` config groups: what `conf/eval/*.yaml` and `chat.*` may set."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from data.rules import above, between, existing_file, non_negative_int, one_of, positive_int

EVALUATIONS = ("hotel", "truthfulqa", "loss")
LOSS_IMPLS = ("chunked", "full", "liger")  # train.loss_impl: see eval/loss.py
SPLITS = ("train", "dev", "test")


@dataclass
class EvalConfig:
    # hotel (turn-by-turn function calling) | truthfulqa (MC1/MC2) | loss
    name: str = field(default="hotel", metadata=one_of(*EVALUATIONS))
    # data split for hotel, loss and compare_base
    split: str = field(default="test", metadata=one_of(*SPLITS))
    batch_size: int = field(default=16, metadata=positive_int())  # prompts (or scored sequences) per forward pass
    max_new_tokens: int = field(default=256, metadata=positive_int())  # per generated turn
    do_sample: bool = False  # greedy unless true
    temperature: float = field(default=1.0, metadata=above(0))  # with do_sample
    top_p: float = field(default=1.0, metadata=between(0, 1, low_open=True))  # with do_sample
    # first N turns (TruthfulQA: questions); 0 = all. In training: dev turns per generation eval
    subset: int = field(default=0, metadata=non_negative_int())
    # re-score this predictions.jsonl; no model is loaded
    predictions: Optional[str] = field(default=None, metadata=existing_file())
    compare_base: bool = False  # also write compare.md: base vs tuned replies on the first compare_n turns
    compare_n: int = field(default=10, metadata=positive_int())
    truthfulqa: str = field(default="${project_root:}/data/assets/truthfulqa/mc_task.json", metadata=existing_file())
    model_name: Optional[str] = None  # the table's Model column (default: model.name)
    method: Optional[str] = None  # the table's Method column (default: LoRA / Full FT / Prompt, from the checkpoint)


@dataclass
class ChatConfig:
    # a file of user lines, one per line: run them and print the transcript
    script: Optional[str] = field(default=None, metadata=existing_file())
    # what search_hotels queries
    db: str = field(default="${project_root:}/data/assets/hotel/hotel_db.json", metadata=existing_file())
    # function calls the model may make before it must answer one user line
    max_calls: int = field(default=3, metadata=non_negative_int())
