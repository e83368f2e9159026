"""The one check of a run's config before any work: every field against the rule declared beside it
(data/rules.py), then what only several keys together can say. Errors raise `ConfigError`
(`<key>=<value>: <why>; allowed: <what>`); what may be meant returns as warnings."""
from __future__ import annotations

from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from data.rules import ConfigError, check_config
from models.config import RANK_METHODS, TINY
from models.gguf import PACKAGED_MODELS


def validate_run(cfg: DictConfig, overrides: Sequence[str] = ()) -> list[str]:
    """Raise `ConfigError` for the first bad value or combination; return one-line warnings.
    `overrides` (the command line's `key=value`s) tell a value the user gave from a default."""
    check_config(cfg)
    t, sched = cfg.train, cfg.sched
    given = {o.partition("=")[0].lstrip("+~") for o in overrides}
    warnings = []
    for key in ("train.eval_every", "train.eval_generate_every", "train.show_dev_turns"):
        value = OmegaConf.select(cfg, key)
        if value > 0 and not cfg.data.dev:
            if key in given:  # asked for on the command line: an error; from a preset: a warning
                raise ConfigError(key, value, "there is no dev split to evaluate (data.dev is unset)",
                                  "0, or set data.dev=<file>")
            warnings.append(f"{key}={value} does nothing: there is no dev split (data.dev is unset)")
    unused = sorted(given & {"train.grad_ckpt_policy", "train.grad_ckpt_every"})
    if unused and not t.grad_ckpt:
        raise ConfigError(unused[0], OmegaConf.select(cfg, unused[0]), "checkpointing is off (train.grad_ckpt=false)",
                          "add train.grad_ckpt=true")
    if t.max_steps > 0 and sched.warmup_steps > t.max_steps:
        raise ConfigError("sched.warmup_steps", sched.warmup_steps,
                          f"longer than the run (train.max_steps={t.max_steps})", f"0 to {t.max_steps}")
    _check_model(cfg)
    _check_combinations(cfg)
    if t.max_steps > 0 and "train.epochs" in given:
        warnings.append(f"train.max_steps={t.max_steps} sets the run's length; train.epochs={t.epochs:g} is unused")
    if not sched.warmup_steps and sched.warmup_ratio == 1:
        warnings.append("sched.warmup_ratio=1: the whole run is warm-up; the learning rate peaks at the last step")
    return warnings


def _check_model(cfg: DictConfig) -> None:
    """`model.path` holds a model, and a LoRA rank is not above the model's hidden size (more adds
    parameters but no rank). Checked where the model's config is at hand without work: the embedded
    tiny model, a local directory's (or cached hub model's) config.json; a GGUF file needs converting first."""
    from models.loading import check_model_files, resolve_model_path  # torch: imported only when needed

    model = cfg.model
    if model.gguf_file or model.path in PACKAGED_MODELS:
        return
    if model.path == TINY:
        from models.tiny import tiny_config

        config = tiny_config()
    else:
        from transformers import AutoConfig

        path = resolve_model_path(model)  # a local path that holds no model fails here, naming what it looked for
        check_model_files(path)
        try:
            config = AutoConfig.from_pretrained(path, revision=model.revision,
                                                trust_remote_code=model.trust_remote_code, local_files_only=True)
        except (OSError, ValueError):  # a hub id not downloaded yet, or a config only the loader explains
            return
    hidden = getattr(config, "hidden_size", None)
    if cfg.peft.method in RANK_METHODS and hidden and cfg.peft.r > hidden:
        raise ConfigError("peft.r", cfg.peft.r, f"larger than the model's hidden size ({hidden})", f"1 to {hidden}")


def _check_combinations(cfg: DictConfig) -> None:
    """What a peft method, an engine and the loop's options cannot do together (`ValueError`s naming the keys)."""
    from models.adapters import peft_method  # torch: imported once every single value has passed
    from trainer.engines import check_engine

    t = cfg.train
    method = peft_method(cfg.peft, t.grad_ckpt)
    check_engine(cfg, method.quantized, prompt_learning=not method.packs)
    if t.compile and cfg.dist.engine == "deepspeed":
        raise ValueError("train.compile=true is not supported with DeepSpeed engines (dist.engine=deepspeed); "
                         "use dist=single or dist=ddp, or train.compile=false")
    if t.compile and t.grad_ckpt:
        raise ValueError("train.compile=true does not combine with train.grad_ckpt=true: torch.utils.checkpoint "
                         "runs its function with TorchDynamo disabled, so the layers would not be compiled; "
                         "set one of them to false")
