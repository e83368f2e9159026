"""The `data` config group: what `conf/data/*.yaml` may set."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class DataConfig:
    name: str = "hotel"
    format: str = "messages"  # messages | chatglm | alpaca | sharegpt | csv
    train: str = "???"
    dev: Optional[str] = None
    test: Optional[str] = None
    packing: bool = True  # pack whole dialogues into rows of train.seq_len tokens
    overlong: str = "truncate"  # truncate (at a turn boundary) | drop | error
    multi_turn: str = "one_pass"  # one_pass (every trained turn of a dialogue in one sample) | per_turn (one sample per turn)
    train_on: list[str] = field(default_factory=lambda: ["assistant", "call"])
    tools: list[str] = field(default_factory=list)  # JSON files of function schemas rendered into the system turn
    system: Optional[str] = None  # system prompt for conversations that have none
    columns: dict[str, str] = field(default_factory=dict)  # csv: role -> column
    filter_column: Optional[str] = None  # csv: keep rows whose value here is truthy
    cache_dir: str = "${oc.env:TURNPACK_HOME,'~/.cache/turnpack'}/data"
    num_proc: Optional[int] = None  # encoding processes; None: every core for 5,000+ dialogues, else 1
