"""Secrets never leave the process: every config dump (config.yaml, the console, W&B) goes through here.

A value is a secret when its key's name has a word KEY, TOKEN, SECRET or PASSWORD (`api_key`,
`hf_token`, `dbPassword`; not `tokenizer` or `max_new_tokens`), or when it contains the value of an
environment variable whose name has such a word (`HF_TOKEN`, `WANDB_API_KEY`, ...).
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

REDACTED = "[redacted]"
SECRET_WORDS = frozenset({"key", "token", "secret", "password", "passwd"})
# An environment value this short ("1", "true") is a flag, not a credential; redacting it would mangle the config.
MIN_SECRET_LENGTH = 6
_WORD_BOUNDARY = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")


def is_secret_name(name: str) -> bool:
    """Whether a key or variable name has a secret word as a whole part (`hf_token`, `apiKey`)."""
    return any(word.lower() in SECRET_WORDS for word in _WORD_BOUNDARY.split(name))


def secret_env_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of the environment variables whose names mark them as secrets, longest first."""
    environ = os.environ if environ is None else environ
    values = {v for k, v in environ.items() if is_secret_name(k) and len(v) >= MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


def redact(value: Any, secrets: list[str] | None = None, key: str = "") -> Any:
    """A copy of a plain structure (dicts, lists, scalars) with every secret replaced by `[redacted]`."""
    secrets = secret_env_values() if secrets is None else secrets
    if isinstance(value, Mapping):
        return {k: redact(v, secrets, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, secrets, key) for v in value]
    if value is not None and not isinstance(value, bool) and is_secret_name(key):  # a flag is no secret
        return REDACTED
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
    return value


def redact_overrides(overrides: list[str], secrets: list[str] | None = None) -> list[str]:
    """Hydra override strings (`key=value`) with secret keys' values and secret values replaced."""
    secrets = secret_env_values() if secrets is None else secrets
    redacted = []
    for override in overrides:
        key, sep, value = override.partition("=")
        name = key.lstrip("+~").rsplit(".", 1)[-1]
        redacted.append(f"{key}{sep}{REDACTED}" if sep and is_secret_name(name) else redact(override, secrets))
    return redacted


def redacted_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as a plain dict, ready to dump anywhere."""
    return redact(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
