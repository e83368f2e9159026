"""How a step's gradients are made and applied: one process, DDP, DeepSpeed ZeRO 1/2/3, or FSDP2.

The loop owns the steps and calls the same few things whatever the engine: `model` (what
the training forward runs on), `no_sync(last)`, `backward(loss, last)`, `step(skip)` (→ grad
norm and whether the step was skipped as non-finite; `skip` is the loop's say on that),
`lr()`, and `save`/`load`/`full_weights` for checkpoints. Data, loss normalisation, logging and
the checkpoints' standard files stay in the loop.

Every engine first prepares the model (wraps or shards it) and only then builds the optimizer and
schedule, through the loop's `OptimizerFactory`, from the parameters it will step: an optimizer
built before `fully_shard` holds the replaced unsharded tensors and silently trains nothing.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from omegaconf import DictConfig
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from trainer import checkpoint
from trainer.config import ZERO_STAGES
from trainer.distributed import DistContext

# (module whose trainable parameters the optimizer steps) -> (optimizer, learning-rate schedule)
OptimizerFactory = Callable[[torch.nn.Module], tuple[torch.optim.Optimizer, Any]]


class Engine(Protocol):
    model: torch.nn.Module  # what the training forward runs on (the DDP / DeepSpeed wrapper)
    optimizer: torch.optim.Optimizer
    lockstep: bool  # every rank must run the same number of forwards (ZeRO-3 gathers in each)

    def no_sync(self, last: bool) -> contextlib.AbstractContextManager: ...
    def backward(self, loss: torch.Tensor, last: bool) -> None: ...
    def step(self, skip: Callable[[bool], bool]) -> tuple[float, bool]: ...
    def lr(self) -> float: ...
    def state_dict(self) -> dict[str, Any]: ...
    def save(self, directory: Path) -> None: ...
    def load(self, directory: Path, state: dict[str, Any]) -> None: ...
    def full_weights(self) -> contextlib.AbstractContextManager[dict[str, torch.Tensor] | None]: ...


class TorchEngine:
    """One process, or DDP across processes: torch's optimizer, scheduler and GradScaler."""

    lockstep = False

    def __init__(self, module: torch.nn.Module, make_optimizer: OptimizerFactory, scaler: torch.amp.GradScaler,
                 grad_clip: float, dist: DistContext):
        self.module, self.scaler = module, scaler
        self.grad_clip = grad_clip if grad_clip > 0 else float("inf")
        self.model = module
        if dist.world_size > 1:
            self.model = DistributedDataParallel(
                module, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
        self.optimizer, self.scheduler = make_optimizer(module)
        self._params = [p for p in module.parameters() if p.requires_grad]

    def no_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """DDP all-reduces only on the step's last micro-batch."""
        if last or not isinstance(self.model, DistributedDataParallel):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        self.scaler.scale(loss).backward()

    def step(self, skip: Callable[[bool], bool]) -> tuple[float, bool]:
        """Clip, step, advance the schedule; the global grad norm before clipping, and whether the step
        was skipped.

        `skip(grads_non_finite)` (the loop's decision, the same on every rank) may skip the step:
        gradients are dropped, weights, optimizer state and schedule stay as they are. Under fp16
        loss scaling an overflow is the GradScaler's own to skip (it also lowers the scale), so it
        is not reported as non-finite.
        """
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self._params, self.grad_clip)
        grad_norm = float(norm.full_tensor() if isinstance(norm, DTensor) else norm)  # FSDP: summed over shards
        if skip(not math.isfinite(grad_norm) and not self.scaler.is_enabled()):
            self.scaler.update()  # ends the scaler's step (lowers the scale if it saw an overflow)
            self.optimizer.zero_grad(set_to_none=True)
            return grad_norm, True
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, False

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def state_dict(self) -> dict[str, Any]:
        """Optimizer, schedule and scaler: identical on every rank, so rank 0's copy is the state
        (and a run may resume with a different number of processes)."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def save(self, directory: Path) -> None:
        """Nothing beyond `state_dict`, which the loop writes into trainer_state.pt."""

    def load(self, directory: Path, state: dict[str, Any]) -> None:
        checkpoint.load_weights(self.module, directory)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])

    @contextlib.contextmanager
    def full_weights(self) -> Iterator[dict[str, torch.Tensor] | None]:
        """Weights are whole on every rank; None means "save the module as it is"."""
        yield None


def deepspeed_config(cfg: DictConfig, world_size: int, autocast_dtype: torch.dtype | None) -> dict[str, Any]:
    """The DeepSpeed JSON, generated from the run's config so the two never disagree;
    `dist.deepspeed_config=<file>` replaces it (batch sizes are then checked against the run's)."""
    t, d = cfg.train, cfg.dist
    if d.deepspeed_config:
        path = Path(d.deepspeed_config)
        if not path.is_file():
            raise FileNotFoundError(f"dist.deepspeed_config={d.deepspeed_config}: no such file")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        for key, ours in (("train_micro_batch_size_per_gpu", t.batch_size),
                          ("gradient_accumulation_steps", t.grad_accum)):
            if config.get(key, ours) != ours:
                raise ValueError(f"{path}: {key}={config[key]} disagrees with the run's {ours} "
                                 "(train.batch_size / train.grad_accum); leave it out or make them equal")
        return config | {"train_micro_batch_size_per_gpu": t.batch_size, "gradient_accumulation_steps": t.grad_accum,
                         "train_batch_size": t.batch_size * t.grad_accum * world_size}
    if d.zero_stage not in ZERO_STAGES:
        raise ValueError(f"dist.zero_stage={d.zero_stage}; allowed with dist.engine=deepspeed: {list(ZERO_STAGES)}")
    if d.offload_params and d.zero_stage != 3:
        raise ValueError("dist.offload_params=true needs dist.zero_stage=3 (only ZeRO-3 partitions parameters)")
    zero: dict[str, Any] = {
        "stage": d.zero_stage, "overlap_comm": True, "contiguous_gradients": True,
        "reduce_bucket_size": d.bucket_size, "allgather_bucket_size": d.bucket_size,
    }
    if d.zero_stage == 3:
        zero |= {"stage3_prefetch_bucket_size": d.bucket_size, "stage3_gather_16bit_weights_on_model_save": True}
    if d.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if d.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.batch_size * t.grad_accum * world_size,
        "gradient_clipping": t.grad_clip,
        "bf16": {"enabled": autocast_dtype == torch.bfloat16},
        "fp16": {"enabled": autocast_dtype == torch.float16},
        "zero_optimization": zero,
        # Our own torch/bitsandbytes optimizer and schedule drive the step, also with offload.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def zero_stage(cfg: DictConfig) -> int:
    """The ZeRO stage the run will use (0 for torch engines), from the generated or given JSON."""
    if cfg.dist.engine != "deepspeed":
        return 0
    return int(deepspeed_config(cfg, 1, None).get("zero_optimization", {}).get("stage", 0))


def partitioned_loading(cfg: DictConfig, world_size: int, autocast_dtype: torch.dtype | None) -> Any:
    """Under ZeRO-3, while the returned object lives, transformers builds and loads models already
    partitioned (`deepspeed.zero.Init`), so no rank ever holds the whole model; None otherwise."""
    if zero_stage(cfg) != 3:
        return None
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    deepspeed.init_distributed()  # adopts our process group, so DeepSpeed's batch checks see the world size
    return HfDeepSpeedConfig(deepspeed_config(cfg, world_size, autocast_dtype))


class DeepSpeedEngine:
    """ZeRO 1/2/3 (+ offload) through `deepspeed.initialize`, `engine.backward`, `engine.step`.

    DeepSpeed counts micro-steps itself: every backward is followed by `engine.step()`, which
    applies clipping, the optimizer and the schedule only at the accumulation boundary. The
    loss arrives already divided by the step's trained tokens, so DeepSpeed must not divide it
    again by the accumulation count (`scale_wrt_gas=False`).
    """

    def __init__(self, module: torch.nn.Module, make_optimizer: OptimizerFactory, config: dict[str, Any]):
        import deepspeed

        deepspeed.utils.logger.setLevel(logging.WARNING)  # its per-step INFO lines drown the progress bar
        # DeepSpeed still calls the collectives torch renamed; the warning is not the user's to act on.
        warnings.filterwarnings("ignore", r"`torch\.distributed\.\w+` is deprecated", FutureWarning)
        self.module = module
        optimizer, scheduler = make_optimizer(module)  # under ZeRO-3 the parameters were loaded partitioned
        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler, config=config,
            model_parameters=[p for p in module.parameters() if p.requires_grad])
        self.stage = config.get("zero_optimization", {}).get("stage", 0)
        self.lockstep = self.stage == 3

    def no_sync(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        self.model.backward(loss, scale_wrt_gas=False)
        if not last:
            self.model.step()  # a micro-step: DeepSpeed only accumulates here

    def step(self, skip: Callable[[bool], bool]) -> tuple[float, bool]:
        """DeepSpeed applies the step unless the global grad norm is non-finite (the same on every
        rank); then it drops the gradients and leaves weights, optimizer and schedule as they were.
        The decision is DeepSpeed's: `skip` only hears of it, and a skip it asks for after DeepSpeed
        applied the step (a non-finite loss with finite gradients) cannot be honoured. fp16
        overflows are DeepSpeed's loss scaler's business and are not reported."""
        self.model.step()
        skipped = not self.model.was_step_applied() and not self.model.fp16_enabled()
        skip(skipped)
        norm = self.model.get_global_grad_norm()
        return (float(norm) if norm is not None else float("nan")), skipped

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def state_dict(self) -> dict[str, Any]:
        """The sharded state lives in DeepSpeed's own checkpoint (see `save`)."""
        return {}

    def save(self, directory: Path) -> None:
        """Collective: every rank writes its shard of the optimizer (and under ZeRO-3 weight) state."""
        self.model.save_checkpoint(str(directory / "deepspeed"), tag="state", save_latest=False,
                                   exclude_frozen_parameters=True)

    def load(self, directory: Path, state: dict[str, Any]) -> None:
        saved, now = state.get("world_size"), self.model.dp_world_size
        if saved is not None and saved != now:
            raise ValueError(f"resume={directory}: written by {saved} processes, resumed by {now}; DeepSpeed's "
                             "sharded optimizer state resumes only with the number of processes that wrote it")
        path, _ = self.model.load_checkpoint(str(directory / "deepspeed"), tag="state", load_module_strict=False,
                                             load_optimizer_states=True, load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"resume={directory}: no DeepSpeed state in {directory / 'deepspeed'}")

    @contextlib.contextmanager
    def full_weights(self) -> Iterator[dict[str, torch.Tensor] | None]:
        """Under ZeRO-3, gather what the standard files hold (collective: every rank enters): the
        trainable parameters in place for adapters, the consolidated 16-bit state for full
        fine-tuning (on rank 0). Other stages keep whole weights on every rank."""
        if self.stage != 3:
            yield None
            return
        import deepspeed

        params = list(self.module.parameters())
        trainable = [p for p in params if p.requires_grad]
        if len(trainable) < len(params):
            with deepspeed.zero.GatheredParameters(trainable, modifier_rank=None):
                yield None
        else:
            yield self.model._zero3_consolidated_16bit_state_dict()


def parallelize(module: torch.nn.Module, dist: DistContext, reshard_after_forward: bool, offload_params: bool,
                param_dtype: torch.dtype | None) -> torch.nn.Module:
    """FSDP2 in one place: `fully_shard` each decoder layer (its own all-gather and reduce-scatter
    unit), then the root, which takes the rest: embeddings, final norm and the output head, so a tied
    head shares its group with the embedding it is tied to. Activation checkpointing and
    `train.compile` are already in the layers (the loop applies both before the engine).

    The root keeps its parameters gathered after the forward (`reshard_after_forward=False`): the
    chunked loss calls the head after the model's forward, outside FSDP's hooks. `param_dtype`
    (bf16) is the compute dtype; gradients are reduced in fp32 and the sharded weights, which the
    optimizer steps, keep the dtype the model was loaded in.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    from models.compile import decoder_layers

    mesh = init_device_mesh(dist.device.type, (dist.world_size,))
    policies = {"mesh": mesh,
                "mp_policy": MixedPrecisionPolicy(param_dtype=param_dtype,
                                                  reduce_dtype=torch.float32 if param_dtype else None),
                "offload_policy": CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if offload_params
                else OffloadPolicy()}
    for layer in decoder_layers(module, setting="dist.engine=fsdp"):
        fully_shard(layer, reshard_after_forward=reshard_after_forward, **policies)
    return fully_shard(module, reshard_after_forward=False, **policies)


class FsdpEngine(TorchEngine):
    """FSDP2 (`fully_shard`): weights, gradients and optimizer state sharded over the ranks.

    The step is TorchEngine's (clip over the sharded gradients, step, schedule) with loss scaling
    off. Gradients are reduce-scattered after every micro-batch: each rank accumulates only its
    shard, where skipping the sync would keep whole unsharded gradients. Every forward gathers
    weights from all ranks, so the ranks run the same number of them (`lockstep`).
    Checkpoints go through torch.distributed.checkpoint (DCP): each rank writes its shard of the
    trainable weights and optimizer state, and any number of processes reads them back.
    """

    lockstep = True

    def __init__(self, module: torch.nn.Module, make_optimizer: OptimizerFactory, grad_clip: float,
                 dist: DistContext, reshard_after_forward: bool, offload_params: bool,
                 param_dtype: torch.dtype | None):
        self.module = self.model = parallelize(module, dist, reshard_after_forward, offload_params, param_dtype)
        self.scaler = torch.amp.GradScaler(dist.device.type, enabled=False)
        self.grad_clip = grad_clip if grad_clip > 0 else float("inf")
        self.optimizer, self.scheduler = make_optimizer(self.module)  # from the sharded parameters
        self._params = [p for p in self.module.parameters() if p.requires_grad]
        # named_parameters lists a tied head once, under the embedding's name; frozen weights never.
        self._trainable = {name for name, p in self.module.named_parameters() if p.requires_grad}

    def state_dict(self) -> dict[str, Any]:
        """The schedule (the same on every rank); weights and optimizer state are sharded (see `save`)."""
        return {"scheduler": self.scheduler.state_dict()}

    def _sharded_state(self) -> dict[str, Any]:
        """What DCP saves and loads: the trainable weights (get_model_state_dict also returns a tied
        frozen head, dropped here) and the optimizer state, as this rank's shards keyed by name."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        weights, optimizer = get_state_dict(self.module, self.optimizer,
                                            options=StateDictOptions(ignore_frozen_params=True))
        return {"model": {k: v for k, v in weights.items() if k in self._trainable}, "optimizer": optimizer}

    def save(self, directory: Path) -> None:
        """Collective: every rank writes its shards into `directory/dcp`."""
        import torch.distributed.checkpoint as dcp

        dcp.save(self._sharded_state(), checkpoint_id=directory / checkpoint.DCP_DIR)

    def load(self, directory: Path, state: dict[str, Any]) -> None:
        """Collective: DCP reads the shards this rank now owns, whatever the number of processes that
        wrote them."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        if not (directory / checkpoint.DCP_DIR).is_dir():
            raise FileNotFoundError(f"resume={directory}: no {checkpoint.DCP_DIR}/ (not written by dist.engine=fsdp)")
        sharded = self._sharded_state()
        dcp.load(sharded, checkpoint_id=directory / checkpoint.DCP_DIR)
        set_state_dict(self.module, self.optimizer, model_state_dict=sharded["model"],
                       optim_state_dict=sharded["optimizer"], options=StateDictOptions(strict=False))
        self.scheduler.load_state_dict(state["scheduler"])

    @contextlib.contextmanager
    def full_weights(self) -> Iterator[dict[str, torch.Tensor] | None]:
        """The trainable weights gathered whole from every rank's shard (collective), on rank 0's CPU;
        other ranks get an empty dict. Not peft's or transformers' own saving, which see only a
        rank's shards (and would write rank 0's slice of every adapter)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        weights = get_model_state_dict(self.module, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True, ignore_frozen_params=True))
        yield {k: v for k, v in weights.items() if k in self._trainable}


def local_shard(param: torch.Tensor) -> torch.Tensor:
    """The part of a parameter this rank holds: its FSDP or ZeRO-3 shard, else the whole tensor."""
    if isinstance(param, DTensor):
        return param.to_local()
    return getattr(param, "ds_tensor", param)


def check_engine(cfg: DictConfig, quantized: bool, prompt_learning: bool) -> None:
    """Refuse, before any work, what an engine cannot do."""
    if cfg.dist.engine == "fsdp":
        check_fsdp(cfg, quantized, prompt_learning)
    elif zero_stage(cfg) == 3 and quantized:
        raise ValueError(f"dist={cfg.dist.name} with peft=qlora: ZeRO-3 cannot partition bitsandbytes 4-bit "
                         "weights in this trainer; use dist=zero2 or dist=ddp (4-bit weights are small anyway)")
    sharded = "FSDP" if cfg.dist.engine == "fsdp" else "ZeRO-3" if zero_stage(cfg) == 3 else None
    generating = [key for key in ("eval_generate_every", "show_dev_turns") if cfg.train[key] > 0]
    if sharded and cfg.data.dev and generating:
        raise ValueError(f"train.{generating[0]}={cfg.train[generating[0]]} with dist={cfg.dist.name}: "
                         f"generation during {sharded} training is not supported (every forward gathers weights "
                         "from all ranks, which would generate different lengths in lock step); set it to 0 and "
                         "score a checkpoint with launch/evaluate.py")


def check_fsdp(cfg: DictConfig, quantized: bool, prompt_learning: bool) -> None:
    """What FSDP2 cannot shard here, each refused with the alternative."""
    name = f"dist={cfg.dist.name}"
    if quantized:
        raise ValueError(f"{name} with peft=qlora: FSDP cannot shard bitsandbytes 4-bit weights in this trainer; "
                         "use dist=ddp (4-bit weights are small anyway) or peft=lora")
    if prompt_learning:
        raise ValueError(f"{name} with peft={cfg.peft.method}: the prompt encoder is saved unsharded in this "
                         "trainer; use dist=ddp or peft=lora")
    if cfg.optim.name != "adamw":
        raise ValueError(f"{name} with optim.name={cfg.optim.name}: bitsandbytes optimizers cannot step FSDP's "
                         "sharded parameters (DTensors); use optim=adamw (its state is sharded anyway)")
    if cfg.train.precision == "fp16":
        raise ValueError(f"{name} with train.precision=fp16: fp16 loss scaling is not supported under FSDP "
                         "here; use train.precision=bf16")
    if cfg.dist.offload_optimizer:
        raise ValueError(f"{name} with dist.offload_optimizer=true: FSDP offloads parameters, gradients and "
                         "optimizer state together; use dist.offload_params=true")


def build_engine(cfg: DictConfig, module: torch.nn.Module, make_optimizer: OptimizerFactory,
                 scaler: torch.amp.GradScaler, autocast_dtype: torch.dtype | None, dist: DistContext) -> Engine:
    """`dist.engine`: torch (one process, or DDP under torchrun), deepspeed (ZeRO `dist.zero_stage`) or fsdp
    (FSDP2, `dist.reshard_after_forward`). The engine prepares `module`, then builds the optimizer."""
    if cfg.dist.engine == "torch":
        return TorchEngine(module, make_optimizer, scaler, cfg.train.grad_clip, dist)
    if cfg.dist.engine == "fsdp":
        return FsdpEngine(module, make_optimizer, cfg.train.grad_clip, dist, cfg.dist.reshard_after_forward,
                          cfg.dist.offload_params, autocast_dtype)
    return DeepSpeedEngine(module, make_optimizer, deepspeed_config(cfg, dist.world_size, autocast_dtype))
