"""The whole run's structured config: Hydra validates every key against these dataclasses,
so a mistyped key fails before any work, naming the key."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from data.config import DataConfig
from data.rules import (above, at_least, between, existing_dir, existing_file, non_negative_int, one_of, pair_between,
                        positive_int)
from eval.config import LOSS_IMPLS, ChatConfig, EvalConfig
from models.config import GRAD_CKPT_POLICIES, ModelConfig, PeftConfig, ServeConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}  # ours → transformers'
ENGINES = ("torch", "deepspeed", "fsdp")
ZERO_STAGES = (1, 2, 3)
LOGGER_BACKENDS = ("stdout", "wandb")
WANDB_MODES = ("auto", "online", "offline", "disabled")
OPTIMIZER_NAMES = ("adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")  # trainer/optim.py OPTIMIZERS


@dataclass
class TrainConfig:
    seq_len: int = field(default=1024, metadata=positive_int())  # tokens per packed row
    batch_size: int = field(default=4, metadata=positive_int())  # rows per micro-batch (per rank)
    grad_accum: int = field(default=1, metadata=positive_int())  # micro-batches per optimizer step
    # optimizer steps; -1: train.epochs over the data
    max_steps: int = field(default=-1, metadata=positive_int(also=[-1]))
    epochs: float = field(default=1.0, metadata=above(0))  # with max_steps=-1
    # steps between dev evaluations; 0: only at the end
    eval_every: int = field(default=0, metadata=non_negative_int())
    # steps between checkpoints; 0: only final/
    save_every: int = field(default=0, metadata=non_negative_int())
    # also checkpoint when this much wall-clock time passed since the last; 0: off
    save_every_minutes: float = field(default=0, metadata=at_least(0))
    # keep only the newest N step_* checkpoints (and the one resumed from); 0: all
    keep_last: int = field(default=0, metadata=non_negative_int())
    # stop after this many consecutive non-finite (skipped) steps; 0: never stop
    max_bad_steps: int = field(default=5, metadata=non_negative_int())
    log_every: int = field(default=1, metadata=positive_int())
    seed: int = field(default=42, metadata=non_negative_int())
    grad_clip: float = field(default=1.0, metadata=at_least(0))  # max global grad norm; 0 disables clipping
    # auto (bf16 autocast where supported, else fp32) | bf16 | fp16 | fp32
    precision: str = field(default="auto", metadata=one_of(*PRECISIONS))
    grad_ckpt: bool = False  # activation (gradient) checkpointing of decoder layers
    # full: keep each checkpointed layer's input, recompute the rest | selective: keep matmul and attention
    # outputs, recompute the cheap elementwise ops (norms, activations, RoPE, residual adds)
    grad_ckpt_policy: str = field(default="full", metadata=one_of(*GRAD_CKPT_POLICIES))
    grad_ckpt_every: int = field(default=1, metadata=positive_int())  # checkpoint every k-th layer; the rest keep all
    device: str = field(default="auto", metadata=one_of("auto", "cpu", "cuda"))  # auto | cpu | cuda
    # dev micro-batches per evaluation; 0: the whole dev split
    eval_batches: int = field(default=0, metadata=non_negative_int())
    # steps between slot-F1/BLEU evals on eval.subset dev turns; 0: never
    eval_generate_every: int = field(default=0, metadata=non_negative_int())
    # the first N dev turns answered before training and after it, printed and written to before_after.md
    show_dev_turns: int = field(default=0, metadata=non_negative_int())
    # chunked (head + cross-entropy on trained tokens, in chunks) | full | liger (CUDA)
    loss_impl: str = field(default="chunked", metadata=one_of(*LOSS_IMPLS))
    # trained tokens per head chunk (loss_impl=chunked): memory O(chunk × vocab)
    loss_chunk: int = field(default=1024, metadata=positive_int())
    compile: bool = False  # torch.compile each decoder layer (inductor); rows padded to seq_len, one shape


@dataclass
class OptimConfig:
    name: str = field(default="adamw", metadata=one_of(*OPTIMIZER_NAMES))
    lr: float = field(default=2e-4, metadata=above(0))
    weight_decay: float = field(default=0.0, metadata=at_least(0))
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata=pair_between(0, 1))
    eps: float = field(default=1e-8, metadata=above(0))


@dataclass
class SchedConfig:
    # cosine | linear | constant (all with linear warmup)
    name: str = field(default="cosine", metadata=one_of(*SCHEDULES))
    warmup_steps: int = field(default=0, metadata=non_negative_int())
    warmup_ratio: float = field(default=0.0, metadata=between(0, 1))  # used when warmup_steps is 0


@dataclass
class LoggerConfig:
    # stdout: console + <output_dir>/metrics.jsonl | wandb: the same, plus a W&B run
    backend: str = field(default="stdout", metadata=one_of(*LOGGER_BACKENDS))
    project: str = "turnpack"
    entity: Optional[str] = None  # W&B team or user; None: the API key's default
    group: Optional[str] = None  # None: in a multirun, the sweep id (shared by all its jobs)
    name: Optional[str] = None  # None: in a multirun, the job's swept overrides; else W&B picks one
    tags: list[str] = field(default_factory=list)
    # auto (online with an API key configured, else offline) | online | offline | disabled
    mode: str = field(default="auto", metadata=one_of(*WANDB_MODES))
    log_checkpoints: bool = False  # upload each saved checkpoint as a W&B model artifact
    plots: bool = True  # draw <output_dir>/plots/*.png at the end of the run


@dataclass
class PerfConfig:
    # per-device peak for train/mfu; None: known CUDA devices' bf16 peak
    peak_tflops: Optional[float] = field(default=None, metadata=above(0))


@dataclass
class SweepConfig:
    objective: str = "eval/loss"  # final metric the run returns to Hydra sweepers (Optuna optimises it)
    # minimize | maximize (conf/hydra/sweeper/*.yaml read it)
    direction: str = field(default="minimize", metadata=one_of("minimize", "maximize"))


@dataclass
class DistConfig:
    name: str = "single"
    # torch (one process; DDP when torchrun starts several) | deepspeed | fsdp (FSDP2)
    engine: str = field(default="torch", metadata=one_of(*ENGINES))
    # deepspeed: 1 optimizer states, 2 + gradients, 3 + parameters sharded
    zero_stage: int = field(default=0, metadata=one_of(0, *ZERO_STAGES))
    offload_optimizer: bool = False  # deepspeed: optimizer states and step on the CPU
    # deepspeed ZeRO-3 or fsdp: parameters on the CPU (fsdp: gradients and optimizer too)
    offload_params: bool = False
    reshard_after_forward: bool = True  # fsdp: free gathered layer weights after the forward; False: keep them
    # auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    backend: str = field(default="auto", metadata=one_of("auto", "nccl", "gloo"))
    # a collective waiting longer than this fails the job (a dead rank)
    timeout_minutes: float = field(default=30, metadata=above(0))
    # deepspeed reduce / all-gather bucket, in elements
    bucket_size: int = field(default=200_000_000, metadata=positive_int())
    # a DeepSpeed JSON file used instead of the generated one
    deepspeed_config: Optional[str] = field(default=None, metadata=existing_file())


@dataclass
class PreviewConfig:
    samples: int = field(default=3, metadata=positive_int())
    split: str = field(default="train", metadata=one_of("train", "dev", "test"))
    json: bool = False


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    output_dir: str = "${hydra:runtime.output_dir}"
    # auto: newest complete checkpoint in output_dir; or a checkpoint dir
    resume: Optional[str] = field(default=None, metadata=existing_dir(also=["auto"]))


@dataclass
class InferenceConfig(RunConfig):
    """`launch/evaluate.py` and `launch/chat.py`: a run config plus the checkpoint to load.

    The run's own config.yaml (found beside the checkpoint) supplies model, peft, data and
    train; the command line overrides any of them.
    """

    # <run>/final or <run>/checkpoints/step_N; None: the base model (model.path)
    checkpoint: Optional[str] = field(default=None, metadata=existing_dir())
    output_dir: Optional[str] = None  # None: <checkpoint>/eval/<eval.name>[_<eval.split>]
    chat: ChatConfig = field(default_factory=ChatConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)  # launch/serve.py; serve.url: chat/evaluate via a server


def register_configs() -> None:
    """Make the schema and `${project_root:}` known to Hydra before it composes conf/."""
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    ConfigStore.instance().store(name="inference_schema", node=InferenceConfig)
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("run_stamp"):
        OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True)


RUN_STAMP_ENV = "TURNPACK_RUN_STAMP"


def run_stamp() -> str:
    """`<date>/<time>` naming the run (or sweep) directory: rank 0's under torchrun, where
    `trainer.run.share_run_dir` broadcasts it before Hydra composes; else now."""
    return os.environ.get(RUN_STAMP_ENV) or time.strftime("%Y-%m-%d/%H-%M-%S")
