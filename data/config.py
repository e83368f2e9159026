"""The `data` config group: what `conf/data/*.yaml` may set."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from data.conversation import TRAINABLE_KINDS
from data.formats import FORMATS
from data.rules import each_of, existing_file, existing_files, one_of, positive_int

OVERLONG = ("truncate", "drop", "error")
MULTI_TURN = ("one_pass", "per_turn")


@dataclass
class DataConfig:
    name: str = "hotel"
    format: str = field(default="messages", metadata=one_of(*FORMATS))
    train: str = field(default="???", metadata=existing_file())
    dev: Optional[str] = field(default=None, metadata=existing_file())
    test: Optional[str] = field(default=None, metadata=existing_file())
    packing: bool = True  # pack whole dialogues into rows of train.seq_len tokens
    # truncate (at a turn boundary) | drop | error
    overlong: str = field(default="truncate", metadata=one_of(*OVERLONG))
    # one_pass (every trained turn of a dialogue in one sample) | per_turn (one sample per turn)
    multi_turn: str = field(default="one_pass", metadata=one_of(*MULTI_TURN))
    train_on: list[str] = field(default_factory=lambda: ["assistant", "call"], metadata=each_of(*TRAINABLE_KINDS))
    # JSON files of function schemas rendered into the system turn
    tools: list[str] = field(default_factory=list, metadata=existing_files())
    system: Optional[str] = None  # system prompt for conversations that have none
    columns: dict[str, str] = field(default_factory=dict)  # csv: role -> column
    filter_column: Optional[str] = None  # csv: keep rows whose value here is truthy
    cache_dir: str = "${oc.env:TURNPACK_HOME,'~/.cache/turnpack'}/data"
    # encoding processes; None: every core for 5,000+ dialogues, else 1
    num_proc: Optional[int] = field(default=None, metadata=positive_int())
