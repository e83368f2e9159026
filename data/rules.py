"""Allowed values declared next to the config fields they govern, and the one pass that checks them.

A field states its range in its metadata: `batch_size: int = field(default=4, metadata=at_least(1))`.
`check_config` walks a composed config, finds each node's dataclass, and reports the first value outside
its field's rule as one line, `<key>=<value>: <why>; allowed: <what>`, before any work. A field added
later needs only its metadata to be checked. (In `data/`, the lowest layer, so that every config
module may import it.)
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

RULE = "rule"  # the metadata key


class ConfigError(ValueError):
    """A config value outside what its key allows: `<key>=<value>: <why>; allowed: <what>`."""

    def __init__(self, key: str, value: Any, why: str, allowed: str):
        self.key = key
        super().__init__(f"{key}={show(value)}: {why}; allowed: {allowed}")


@dataclass(frozen=True)
class Rule:
    holds: Callable[[Any], bool]
    why: str  # what is wrong when it does not hold
    allowed: str  # what is allowed, in words


def show(value: Any) -> str:
    """A value as it is written on the command line."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    if isinstance(value, list):
        return "[" + ",".join(show(v) for v in value) + "]"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _rule(holds: Callable[[Any], bool], why: str, allowed: str) -> dict[str, Rule]:
    return {RULE: Rule(holds, why, allowed)}


def at_least(low: float, *, also: Sequence[Any] = (), unit: str = "a number") -> dict[str, Rule]:
    """`low` or more; `also` lists sentinel values that are allowed too (e.g. -1: unset)."""
    extra = "".join(f", or {show(v)}" for v in also)
    return _rule(lambda v: v in also or (_number(v) and v >= low), "out of range", f"{unit} >= {low}{extra}")


def positive_int(*, also: Sequence[Any] = ()) -> dict[str, Rule]:
    return at_least(1, also=also, unit="an integer")


def non_negative_int() -> dict[str, Rule]:
    return at_least(0, unit="an integer")


def above(low: float) -> dict[str, Rule]:
    return _rule(lambda v: _number(v) and v > low, "out of range", f"a number > {low}")


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> dict[str, Rule]:
    """In [low, high]; `low_open`/`high_open` leave out that end."""
    def holds(v: Any) -> bool:
        return _number(v) and (low < v if low_open else low <= v) and (v < high if high_open else v <= high)

    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return _rule(holds, "out of range", f"a number in {interval}")


def pair_between(low: float, high: float) -> dict[str, Rule]:
    """Two numbers, each in [low, high) (Adam's betas)."""
    return _rule(lambda v: len(v) == 2 and all(_number(x) and low <= x < high for x in v),
                 "not a pair in range", f"two numbers in [{low}, {high}), e.g. [0.9,0.999]")


def one_of(*choices: Any) -> dict[str, Rule]:
    return _rule(lambda v: v in choices, "unknown", ", ".join(show(c) for c in choices))


def each_of(*choices: Any) -> dict[str, Rule]:
    """A list whose every item is one of `choices`."""
    return _rule(lambda v: all(x in choices for x in v), "unknown item",
                 f"a list of {', '.join(show(c) for c in choices)}")


def matches(pattern: str, allowed: str) -> dict[str, Rule]:
    """A string that `pattern` matches whole (case-insensitive)."""
    return _rule(lambda v: re.fullmatch(pattern, str(v), re.IGNORECASE) is not None, "not understood", allowed)


def existing_file() -> dict[str, Rule]:
    return _rule(lambda v: Path(v).expanduser().is_file(), "file not found", "an existing file")


def existing_dir(*, also: Sequence[str] = ()) -> dict[str, Rule]:
    extra = "".join(f", or {v}" for v in also)
    return _rule(lambda v: v in also or Path(v).expanduser().is_dir(), "directory not found",
                 f"an existing directory{extra}")


def existing_files() -> dict[str, Rule]:
    return _rule(lambda v: all(Path(x).expanduser().is_file() for x in v), "file not found", "existing files")


def check_config(cfg: DictConfig, prefix: str = "") -> None:
    """Raise `ConfigError` for the first value (depth first, in field order) outside its field's rule,
    or a mandatory value (`???`) left unset. Fields without a rule, and None, pass."""
    schema = OmegaConf.get_type(cfg)
    if not dataclasses.is_dataclass(schema):
        return
    for spec in dataclasses.fields(schema):
        if spec.name not in cfg.keys():
            continue
        key = f"{prefix}{spec.name}"
        if OmegaConf.is_missing(cfg, spec.name):
            raise ConfigError(key, "???", "not set", "give it a value on the command line or in the config")
        rule = spec.metadata.get(RULE)
        if rule is None and OmegaConf.is_interpolation(cfg, spec.name):
            continue  # resolved where it is used (e.g. `${hydra:...}`, known only inside a Hydra job)
        value = cfg[spec.name]
        if isinstance(value, DictConfig):
            check_config(value, f"{key}.")
        elif rule is not None and value is not None and not rule.holds(value):
            raise ConfigError(key, value, rule.why, rule.allowed)
