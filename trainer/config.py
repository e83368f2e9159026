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
from eval.config import ChatConfig, EvalConfig
from models.config import ModelConfig, PeftConfig
from models.serve import ServeConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class TrainConfig:
    seq_len: int = 1024  # tokens per packed row
    batch_size: int = 4  # rows per micro-batch (per rank)
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = -1  # optimizer steps; -1: train.epochs over the data
    epochs: float = 1.0
    eval_every: int = 0  # steps between dev evaluations; 0: only at the end
    save_every: int = 0  # steps between checkpoints; 0: only final/
    save_every_minutes: float = 0  # also checkpoint when this much wall-clock time passed since the last; 0: off
    keep_last: int = 0  # keep only the newest N step_* checkpoints (and the one resumed from); 0: all
    max_bad_steps: int = 5  # stop after this many consecutive non-finite (skipped) steps; 0: never stop
    log_every: int = 1
    seed: int = 42
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    precision: str = "auto"  # auto (bf16 autocast where supported, else fp32) | bf16 | fp16 | fp32
    grad_ckpt: bool = False  # gradient checkpointing
    device: str = "auto"  # auto | cpu | cuda
    eval_batches: int = 0  # dev micro-batches per evaluation; 0: the whole dev split
    eval_generate_every: int = 0  # steps between slot-F1/BLEU evals on eval.subset dev turns; 0: never
    loss_impl: str = "chunked"  # chunked (head + cross-entropy on trained tokens, in chunks) | full | liger (CUDA)
    loss_chunk: int = 1024  # trained tokens per head chunk (loss_impl=chunked): memory O(chunk × vocab)
    compile: bool = False  # torch.compile each decoder layer (inductor); rows padded to seq_len, one shape


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class SchedConfig:
    name: str = "cosine"  # cosine | linear | constant (all with linear warmup)
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # used when warmup_steps is 0


@dataclass
class LoggerConfig:
    backend: str = "stdout"  # stdout: console + <output_dir>/metrics.jsonl | wandb: the same, plus a W&B run
    project: str = "turnpack"
    entity: Optional[str] = None  # W&B team or user; None: the API key's default
    group: Optional[str] = None  # None: in a multirun, the sweep id (shared by all its jobs)
    name: Optional[str] = None  # None: in a multirun, the job's swept overrides; else W&B picks one
    tags: list[str] = field(default_factory=list)
    mode: str = "auto"  # auto (online with an API key configured, else offline) | online | offline | disabled
    log_checkpoints: bool = False  # upload each saved checkpoint as a W&B model artifact
    plots: bool = True  # draw <output_dir>/plots/*.png at the end of the run


@dataclass
class PerfConfig:
    peak_tflops: Optional[float] = None  # per-device peak for train/mfu; None: known CUDA devices' bf16 peak


@dataclass
class SweepConfig:
    objective: str = "eval/loss"  # final metric the run returns to Hydra sweepers (Optuna optimises it)
    direction: str = "minimize"  # minimize | maximize (conf/hydra/sweeper/*.yaml read it)


@dataclass
class DistConfig:
    name: str = "single"
    engine: str = "torch"  # torch (one process; DDP when torchrun starts several) | deepspeed
    zero_stage: int = 0  # deepspeed: 1 optimizer states, 2 + gradients, 3 + parameters sharded
    offload_optimizer: bool = False  # deepspeed: optimizer states and step on the CPU
    offload_params: bool = False  # deepspeed ZeRO-3: parameters on the CPU
    backend: str = "auto"  # auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    timeout_minutes: float = 30  # a collective waiting longer than this fails the job (a dead rank)
    bucket_size: int = 200_000_000  # deepspeed reduce / all-gather bucket, in elements
    deepspeed_config: Optional[str] = None  # a DeepSpeed JSON file used instead of the generated one


@dataclass
class PreviewConfig:
    samples: int = 3
    split: str = "train"
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
    resume: Optional[str] = None  # auto: newest complete checkpoint in output_dir; or a checkpoint dir


@dataclass
class InferenceConfig(RunConfig):
    """`launch/evaluate.py` and `launch/chat.py`: a run config plus the checkpoint to load.

    The run's own config.yaml (found beside the checkpoint) supplies model, peft, data and
    train; the command line overrides any of them.
    """

    checkpoint: Optional[str] = None  # <run>/final or <run>/checkpoints/step_N; None: the base model (model.path)
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
