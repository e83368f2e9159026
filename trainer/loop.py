"""The training loop: packed, loss-masked micro-batches → token-weighted optimizer steps.

Read top to bottom: `Trainer.__init__` builds data, model and engine (which prepares the model, then builds
the optimizer through `build_optimizer`); `train` repeats `forward_backward` over the step's micro-batches,
`optimizer_step`, then `maybe_log`, `maybe_evaluate` and `maybe_checkpoint`. Faults are handled in those
steps: `optimizer_step` skips a non-finite step and agrees with the other ranks on it and on a preemption
signal; `maybe_checkpoint` then checkpoints and stops (trainer/faults.py).
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from transformers import get_scheduler

from data.dataset import PackedSplit, load_split
from data.packing import IGNORE_INDEX, collate_rows
from data.rules import ConfigError
from data.sampling import StepSampler
from data.templates import get_template
from eval.cli import cli_overrides
from eval.generate import GenerationSettings, model_generator
from eval.loss import evaluate_loss, summed_token_loss, trained_positions
from eval.turns import before_after, load_turns, predict_turns, task_metrics
from models.adapters import (apply_peft, count_parameters, describe_parameters, peft_method, quantization_config,
                             unpacked_note)
from models.compile import compile_decoder_layers
from models.loading import enable_activation_checkpointing, load_model, load_tokenizer, resolve_model_path, torch_dtype
from trainer import checkpoint, faults
from trainer.config import PRECISIONS, SCHEDULES
from trainer.distributed import DistContext, init_distributed
from trainer.engines import Engine, build_engine, local_shard, partitioned_loading
from trainer.flops import document_lengths, model_flops, peak_flops
from trainer.metrics import open_logger
from trainer.optim import build_optimizer
from trainer.redact import redacted_config
from trainer.validate import validate_run


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision={precision!r}; allowed: {list(PRECISIONS)}")
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


class Trainer:
    def __init__(self, cfg: DictConfig, dist: DistContext | None = None):
        self.cfg = cfg
        t = cfg.train
        # A value outside its range, or a combination that cannot train, fails before any work (trainer/validate.py).
        config_warnings = validate_run(cfg, cli_overrides())
        self.method = peft_method(cfg.peft, t.grad_ckpt)
        # DeepSpeed and FSDP want a process group even for one process.
        self.dist = dist or init_distributed(t.device, cfg.dist.backend, cfg.dist.timeout_minutes,
                                             always=cfg.dist.engine in ("deepspeed", "fsdp"))
        self.device = self.dist.device
        if self.dist.is_main:
            for warning in config_warnings:
                tqdm.write(f"warning: {warning}", file=sys.stderr)
        self.output_dir = Path(cfg.output_dir)
        seed_everything(t.seed)

        # Data first: bad input stops the run before any model is loaded or anything is written.
        self.tokenizer = load_tokenizer(cfg.model)
        self.template = get_template(cfg.model.template, cfg.model.tool_format, self.tokenizer)
        packing = None if self.method.packs else False  # None: data.packing decides
        if not self.method.packs and cfg.data.packing and self.dist.is_main:
            tqdm.write(unpacked_note(cfg.peft))
        self.train_split = load_split(cfg.data.train, cfg.data, self.template, self.tokenizer, t.seq_len, packing)
        self.dev_split = (load_split(cfg.data.dev, cfg.data, self.template, self.tokenizer, t.seq_len, packing)
                          if cfg.data.dev else None)
        # The generation eval's dev turns: this rank's share of the first eval.subset.
        turns = (load_turns(cfg.data.dev, cfg.data, self.template, cfg.eval.subset)
                 if cfg.data.dev and t.eval_generate_every > 0 else [])
        self.dev_turns = turns[self.dist.rank::self.dist.world_size]
        # Answered before and after training, by the main rank (sharded engines refuse it: trainer/engines.py).
        self.shown_turns = (load_turns(cfg.data.dev, cfg.data, self.template, t.show_dev_turns)
                            if cfg.data.dev and t.show_dev_turns > 0 else [])
        self.sampler = StepSampler(len(self.train_split), t.batch_size, t.grad_accum, self.dist.world_size,
                                   self.dist.rank, t.seed)
        self.max_steps = t.max_steps if t.max_steps > 0 else max(1, math.ceil(t.epochs * self.sampler.steps_per_epoch))
        if cfg.sched.warmup_steps > self.max_steps:  # a run measured in epochs has its length only now
            raise ConfigError("sched.warmup_steps", cfg.sched.warmup_steps,
                              f"longer than the run ({self.max_steps} steps: train.epochs={t.epochs:g} × "
                              f"{self.sampler.steps_per_epoch} steps per epoch)", f"0 to {self.max_steps}")
        # A full disk or an unwritable output dir fails now, not at the first checkpoint hours from now.
        checkpoint.preflight(self.output_dir, checkpoint.estimated_size(
            resolve_model_path(cfg.model), full=self.method.config is None,
            dtype_bytes=torch_dtype(cfg.model.dtype).itemsize))
        resume_point = self.find_resume_point()

        self.autocast_dtype = resolve_precision(t.precision, self.device)
        # Kept for the whole run: transformers asks it whether ZeRO-3 partitions its models.
        self.zero3_loading = partitioned_loading(cfg, self.dist.world_size, self.autocast_dtype)
        model = load_model(cfg.model, device=None if self.zero3_loading else self.device,
                           quantization=quantization_config(cfg.peft))
        if t.grad_ckpt:
            enable_activation_checkpointing(model, t.grad_ckpt_policy, t.grad_ckpt_every)
        self.model = apply_peft(model, cfg.peft, cfg.model).to(self.device)
        self.model.train()
        # Regional compilation (models/compile.py): the layers in place, before DDP wraps or FSDP shards them.
        self.compiled = compile_decoder_layers(self.model) if t.compile else None
        # fp16 loss scaling: ours for torch engines, DeepSpeed's own under DeepSpeed.
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16
                                      and cfg.dist.engine == "torch")
        # Counted before ZeRO-3 or FSDP shard the parameters (a shard holds only part of one).
        full_ckpt = t.grad_ckpt and t.grad_ckpt_policy == "full"
        self.flops = model_flops(self.model, rerun_every=t.grad_ckpt_every if full_ckpt else 0)
        self.peak_flops = peak_flops(cfg.perf.peak_tflops, self.device, self.autocast_dtype or self.model.dtype)
        trainable, total = count_parameters(self.model)
        self.parameter_report = describe_parameters(self.model)
        # What runs the backward and the step: one process, DDP, DeepSpeed ZeRO or FSDP (trainer/engines.py).
        # It wraps or shards the model first, then builds the optimizer from the parameters it steps.
        self.engine: Engine = build_engine(cfg, self.model, self.build_optimizer, scaler, self.autocast_dtype,
                                           self.dist)
        self.step, self.tokens_seen = 0, 0
        self.skipped_steps, self.bad_streak = 0, 0  # non-finite steps: in all, and in a row now
        self.resumed_from: Path | None = None
        self.preemption = faults.PreemptionFlag()
        self.preempting, self.save_due = False, False  # agreed by all ranks in `optimizer_step`
        self._last_save = time.monotonic()
        self.logger = open_logger(cfg, self.output_dir, self.dist.is_main,
                                  {"params": {"trainable": trainable, "total": total}, "batch": self.global_batch()})
        self._window = self._empty_window()
        self.maybe_resume(resume_point)

    def build_optimizer(self, module: torch.nn.Module) -> tuple[torch.optim.Optimizer, Any]:
        """The optimizer over `module`'s trainable parameters and its warmup + decay schedule; the
        engine calls it once it has prepared (wrapped or sharded) the module."""
        optimizer = build_optimizer(module, self.cfg.optim, self.device)
        sched = self.cfg.sched
        warmup = sched.warmup_steps or math.ceil(sched.warmup_ratio * self.max_steps)
        return optimizer, get_scheduler(SCHEDULES[sched.name], optimizer, num_warmup_steps=warmup,
                                        num_training_steps=self.max_steps)

    # ------------------------------------------------------------------ steps
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def micro_batches(self, split: PackedSplit, row_groups: list[list[int]]) -> list[dict[str, torch.Tensor]]:
        """Collated micro-batches on the device; `num_tokens` counts real (unpadded) tokens,
        `doc_lengths` lists the packed documents' lengths (what attention costs) and `trained_index`
        the trained positions, found on the host so that no count needs a device sync.

        With `train.compile` every row is padded to `train.seq_len`: one shape, no recompiles.
        On CUDA the rows are pinned and copied without blocking, the first micro-batch on the compute
        stream, the others on a copy stream while the first computes; such a batch's `ready` event
        must be waited on before use (`forward_backward` does).
        """
        width = self.cfg.train.seq_len if self.cfg.train.compile else None
        cuda = self.device.type == "cuda"
        copy_stream = torch.cuda.Stream(self.device) if cuda and len(row_groups) > 1 else None
        batches = []
        for i, rows in enumerate(row_groups):
            loaded = [split.row(r) for r in rows]
            host = collate_rows(loaded, self.tokenizer.pad_token_id, attention_mask=not self.method.packs,
                                width=width)
            host["trained_index"] = trained_positions(host["labels"])
            stream = copy_stream if i > 0 else None
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                batch = {k: (v.pin_memory() if cuda else v).to(self.device, non_blocking=cuda)
                         for k, v in host.items()}
            batches.append(batch | {"ready": stream.record_event() if stream is not None else None,
                                    "num_tokens": sum(len(r["input_ids"]) for r in loaded),
                                    "doc_lengths": [n for r in loaded for n in document_lengths(r["position_ids"])]})
        return batches

    def forward_backward(self, batches: list[dict[str, torch.Tensor]]) -> tuple[float, int]:
        """Accumulate gradients of (summed token loss / trained tokens of the whole step, all ranks).

        Dividing by the step's total rather than averaging per micro-batch makes 4×1 and
        1×4 accumulation the same update, and weights every trained token equally.
        Gradients are synchronised across ranks on the last micro-batch only.
        """
        local = sum(len(b["trained_index"]) for b in batches)  # counted on the host (micro_batches)
        total = int(self.dist.all_reduce_sum(torch.tensor(float(local))).item())
        # DDP and DeepSpeed average gradients over ranks; scale back so the update is a sum over all tokens.
        scale = self.dist.world_size / max(total, 1)
        t = self.cfg.train
        losses = []
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            if batch["ready"] is not None:  # copied on micro_batches' copy stream
                stream = torch.cuda.current_stream(self.device)
                stream.wait_event(batch["ready"])
                for value in batch.values():
                    if isinstance(value, torch.Tensor):
                        value.record_stream(stream)
            with self.engine.no_sync(last):
                with self.autocast():
                    loss, _ = summed_token_loss(self.engine.model, batch, t.loss_impl, t.loss_chunk)
                self.engine.backward(loss * scale, last)
            losses.append(loss.detach())  # no .item() here: the device runs ahead of the host
        if self.compiled is not None and self.dist.is_main and (new := self.compiled.new_graphs()):
            tqdm.write(f"torch.compile: {new} graph(s) compiled in step {self.step + 1}, "
                       f"{self.compiled.graphs} in all ({'first compile' if new == self.compiled.graphs else 'recompile'})")
        return float(torch.stack(losses).double().sum()), local

    def optimizer_step(self, loss_sum: float | torch.Tensor) -> float:
        """Clip, step, advance the schedule; returns the global grad norm before clipping.

        The step is skipped (weights, optimizer state and schedule untouched) when the loss or the
        grad norm is non-finite on any rank; too many in a row stop the run (`train.max_bad_steps`).
        The same all-reduce tells every rank whether any got a preemption signal or is due for a
        timed checkpoint, so all of them checkpoint the same step.
        """
        step = self.step + 1
        if faults.injected("raise", step, self.dist.rank):
            raise RuntimeError(f"{faults.FAULT_INJECT_ENV}: injected failure at step {step} on rank {self.dist.rank}")
        if faults.injected("nan_loss", step, self.dist.rank):
            loss_sum = float("nan")
        grad_norm, skipped = self.engine.step(functools.partial(self.agree_at_step_boundary, loss_sum))
        if not skipped:
            self.bad_streak = 0
            return grad_norm
        self.skipped_steps += 1
        self.bad_streak += 1
        limit = self.cfg.train.max_bad_steps
        if self.dist.is_main:
            tqdm.write(f"step {step}: non-finite loss or grad norm (this rank: loss {float(loss_sum):.4g}, grad "
                       f"norm {grad_norm:.4g}); optimizer step skipped ({self.bad_streak} in a row, "
                       f"train.max_bad_steps={limit})")
        if limit > 0 and self.bad_streak >= limit:
            last = checkpoint.step_dirs(self.output_dir / "checkpoints")
            raise faults.Diverged(f"step {step}: {self.bad_streak} consecutive optimizer steps with a non-finite "
                                  f"loss or gradient norm (train.max_bad_steps={limit}); stopping. Last good "
                                  f"checkpoint: {last[0][1] if last else 'none'}")
        return grad_norm

    def agree_at_step_boundary(self, loss_sum: float | torch.Tensor, grads_non_finite: bool) -> bool:
        """One tiny all-reduce per step: is the step non-finite on any rank (then every rank skips it),
        did any rank get a preemption signal, is any due for a `train.save_every_minutes` checkpoint."""
        minutes = self.cfg.train.save_every_minutes
        loss_non_finite = ~torch.isfinite(torch.as_tensor(loss_sum, dtype=torch.float64)).cpu()
        flags = torch.tensor([float(grads_non_finite or bool(loss_non_finite)),
                              float(self.preemption.requested is not None),
                              float(minutes > 0 and time.monotonic() - self._last_save >= 60 * minutes)],
                             dtype=torch.float64)
        skip, self.preempting, self.save_due = (v > 0 for v in self.dist.all_reduce_sum(flags).tolist())
        return skip

    def train(self) -> dict[str, float]:
        """Run to `max_steps`; returns the final dev metrics (empty without a dev split)."""
        self.write_config()
        if self.dist.is_main:
            tqdm.write(self.parameter_report)
            tqdm.write(self.train_split.report("train"))
            if self.dev_split is not None:
                tqdm.write(self.dev_split.report("dev"))
            tqdm.write(f"global batch: {self.sampler.rows_per_step} rows × {self.cfg.train.seq_len} tokens "
                       f"= batch_size {self.cfg.train.batch_size} × grad_accum {self.cfg.train.grad_accum} "
                       f"× world {self.dist.world_size}; {self.max_steps} steps "
                       f"({self.sampler.steps_per_epoch} per epoch); dist={self.cfg.dist.name} "
                       f"({type(self.engine).__name__})")
        answered_at, answers = self.step, self.answer_dev_turns()
        bar = tqdm(total=self.max_steps, initial=self.step, disable=not self.dist.is_main, desc="train",
                   dynamic_ncols=True)
        with self.preemption, self.naming_a_failure():
            while self.step < self.max_steps:
                start = time.perf_counter()
                batches = self.micro_batches(self.train_split, self.sampler.micro_batches(self.step))
                loss_sum, trained = self.forward_backward(batches)
                grad_norm = self.optimizer_step(loss_sum)
                self.step += 1
                tokens = sum(b["num_tokens"] for b in batches)
                self.tokens_seen += tokens
                flops = sum(self.flops.training(b["doc_lengths"]) for b in batches)
                self.record(loss_sum, trained, tokens, flops, time.perf_counter() - start, grad_norm)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / max(trained, 1):.4f}",
                                tok_s=f"{tokens * self.dist.world_size / max(time.perf_counter() - start, 1e-9):.0f}")
                self.maybe_log()
                if self.step < self.max_steps:
                    if not self.preempting:  # the time left goes to the checkpoint
                        self.maybe_evaluate()
                    self.maybe_checkpoint()
            # Also when resuming a run that was killed between its last checkpoint and final/.
            metrics = self.maybe_evaluate(force=True)
            self.maybe_checkpoint(final=True)
        bar.close()
        self.show_before_after(answered_at, answers)
        self.logger.finish(self.summary(metrics))
        return metrics

    @contextlib.contextmanager
    def naming_a_failure(self) -> Iterator[None]:
        """An exception on one rank takes the job down (the others' next collective fails or times out
        after `dist.timeout_minutes`); say which rank, at which step, and why."""
        try:
            yield
        except Exception as err:
            if self.dist.world_size > 1 and not isinstance(err, (faults.Preempted, faults.Diverged)):
                tqdm.write(f"error: rank {self.dist.rank} of {self.dist.world_size} failed at step {self.step + 1}: "
                           f"{type(err).__name__}: {err}", file=sys.stderr)
            raise

    # ------------------------------------------------------------ reporting
    @staticmethod
    def _empty_window() -> dict[str, float]:
        return dict.fromkeys(("loss", "trained", "tokens", "flops", "seconds", "grad_norm", "steps"), 0.0)

    def record(self, loss_sum: float, trained: int, tokens: int, flops: float, seconds: float,
               grad_norm: float) -> None:
        w = self._window
        w["loss"] += loss_sum
        w["trained"] += trained
        w["tokens"] += tokens
        w["flops"] += flops
        w["seconds"] += seconds
        w["grad_norm"] += grad_norm
        w["steps"] += 1

    def maybe_log(self) -> None:
        every = self.cfg.train.log_every
        if not (self.step % every == 0 or self.step == self.max_steps) or not self._window["steps"]:
            return
        totals = self.dist.all_reduce_sum(torch.tensor([self._window["loss"], self._window["trained"],
                                                        self._window["tokens"], self._window["flops"]],
                                                       dtype=torch.float64))
        loss, trained, tokens, flops = totals.tolist()
        w = self._window
        self.logger.log(self.step, {
            "train/loss": loss / max(trained, 1),
            "train/lr": self.engine.lr(),
            "train/grad_norm": w["grad_norm"] / w["steps"],
            "train/tokens_per_s": tokens / max(w["seconds"], 1e-9),
            "train/tokens_seen": self.tokens_seen * self.dist.world_size,
            "train/epoch": self.step / self.sampler.steps_per_epoch,
            "train/skipped_steps": self.skipped_steps,
            **self.hardware_metrics(flops, w["seconds"]),
        })
        self._window = self._empty_window()

    def hardware_metrics(self, flops: float, seconds: float) -> dict[str, float]:
        """MFU (FLOPs of all ranks over their peak; only when the peak is known, see trainer/flops.py)
        and, on CUDA, the peak memory allocated since the last log in GiB (omitted on CPU)."""
        metrics = {}
        if self.peak_flops:
            metrics["train/mfu"] = flops / (max(seconds, 1e-9) * self.peak_flops * self.dist.world_size)
        if self.device.type == "cuda":
            metrics["train/mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.device)
        return metrics

    def global_batch(self) -> dict[str, int]:
        """Rows per optimizer step = micro-batch × accumulation × world size."""
        t = self.cfg.train
        return {"micro_batch": t.batch_size, "grad_accum": t.grad_accum, "world_size": self.dist.world_size,
                "global_rows": self.sampler.rows_per_step}

    def summary(self, final: dict[str, float]) -> dict[str, Any]:
        """The run's final numbers: steps, tokens, global batch and the last evaluation."""
        return {"train/steps": self.step, "train/tokens_seen": self.tokens_seen * self.dist.world_size,
                "train/global_batch_rows": self.sampler.rows_per_step, **final}

    def maybe_evaluate(self, force: bool = False) -> dict[str, float]:
        """Dev loss every `eval_every` steps; slot F1 and BLEU-4 of generated dev turns, logged beside
        it, every `eval_generate_every` steps. Both run at the last step."""
        every, generate_every = self.cfg.train.eval_every, self.cfg.train.eval_generate_every
        generate = generate_every > 0 and (force or self.step % generate_every == 0)
        if self.dev_split is None or not (force or generate or (every > 0 and self.step % every == 0)):
            return {}
        result = evaluate_loss(self.model, self.dev_batches(), self.autocast, self.dist.all_reduce_sum)
        logged = {"eval/loss": result["loss"], "eval/perplexity": result["perplexity"]}
        if generate:
            settings = GenerationSettings.from_config(self.cfg.eval)
            scores = task_metrics(self.model, self.tokenizer, self.template, self.dev_turns, settings,
                                  self.autocast, self.dist.all_reduce_sum)
            logged |= {f"eval/{name}": value for name, value in scores.items()}
        self.logger.log(self.step, logged)
        return logged

    def answer_dev_turns(self) -> list[dict[str, Any]]:
        """The model's answers to the `train.show_dev_turns` dev turns now (none when off)."""
        if not self.shown_turns or not self.dist.is_main:
            return []
        settings = GenerationSettings.from_config(self.cfg.eval)
        return predict_turns(model_generator(self.model, self.tokenizer, self.template, settings, self.autocast),
                             self.shown_turns)

    def show_before_after(self, start: int, before: list[dict[str, Any]]) -> None:
        """The shown dev turns answered at step `start` and now: printed and written to before_after.md."""
        if not before:
            return
        text = before_after(f"Dev turns before and after training: step {start} and step {self.step}",
                            self.shown_turns, before, self.answer_dev_turns(), (f"Step {start}", f"Step {self.step}"))
        (self.output_dir / "before_after.md").write_text(text, encoding="utf-8")
        tqdm.write(text)

    def dev_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's share of the dev rows in micro-batches (the first `eval_batches` of them).

        Under ZeRO-3 every forward gathers weights from all ranks, so every rank runs the same
        number of them: a rank with fewer rows runs padding batches that train no tokens.
        """
        size, world = self.cfg.train.batch_size, self.dist.world_size
        rows = list(range(self.dist.rank, len(self.dev_split), world))
        groups = [rows[i:i + size] for i in range(0, len(rows), size)]
        if self.engine.lockstep:
            most = math.ceil(math.ceil(len(self.dev_split) / world) / size)
            groups += [None] * (most - len(groups))
        if self.cfg.train.eval_batches > 0:
            groups = groups[:self.cfg.train.eval_batches]
        for group in groups:
            batch = self.micro_batches(self.dev_split, [group or [0]])[0]
            if group is None:
                batch["labels"].fill_(IGNORE_INDEX)
            yield batch

    # ---------------------------------------------------------- checkpoints
    def training_state(self) -> dict[str, Any]:
        """Rank 0's view of the run: the same on every rank except the RNG (see `save`)."""
        return {"step": self.step, "tokens_seen": self.tokens_seen, "world_size": self.dist.world_size,
                "engine": self.cfg.dist.engine,
                "skipped_steps": self.skipped_steps, "bad_streak": self.bad_streak,
                **self.engine.state_dict(), "rng": checkpoint.rng_state(),
                "data": {"seed": self.cfg.train.seed, "step": self.step,
                         "epoch": self.step // self.sampler.steps_per_epoch}}

    def maybe_checkpoint(self, final: bool = False) -> None:
        """`step_N` every `train.save_every` steps, after `train.save_every_minutes`, when preempted (both
        agreed in `optimizer_step`) and at the end, then `final/`. Older checkpoints beyond
        `train.keep_last` go once the new one is committed. A preemption then stops the run."""
        t = self.cfg.train
        directory = self.output_dir / "checkpoints" / f"step_{self.step}"
        due = final or self.preempting or self.save_due or (t.save_every > 0 and self.step % t.save_every == 0)
        if due and directory != self.resumed_from:  # resuming at max_steps: that checkpoint is there
            saved = self.save(directory, self.training_state())
            self.logger.log_checkpoint(saved, self.step)
            if t.keep_last > 0 and self.dist.is_main:
                checkpoint.prune(directory.parent, t.keep_last, keep=self.resumed_from)
            self._last_save = time.monotonic()
        if final:
            self.save(self.output_dir / "final", None)
        elif self.preempting:
            if self.dist.is_main:
                tqdm.write(f"preempted at step {self.step}: checkpoint {directory}")
            raise faults.Preempted(self.step, str(directory))

    def check_finite_weights(self, directory: Path) -> None:
        """Refuse to write non-finite weights (every rank checks what it holds; they agree)."""
        local = [local_shard(p) for p in self.model.parameters() if p.requires_grad]
        bad = sum(int(not torch.isfinite(p.detach()).all()) for p in local)
        if self.dist.all_reduce_sum(torch.tensor(float(bad))).item() > 0:
            raise faults.Diverged(f"step {self.step}: the weights are not finite; not writing {directory}")

    def save(self, directory: Path, state: dict[str, Any] | None) -> Path:
        """Write a checkpoint; every rank enters (the engine's collective save, ZeRO-3's gathering).

        Rank 0 writes the standard files (safetensors weights, tokenizer, trainer_state.pt), other
        ranks their RNG streams and engine shards, all into one staging directory that rank 0
        renames into place once every rank is done.
        """
        self.check_finite_weights(directory)
        tmp = checkpoint.staging_dir(directory, create=self.dist.is_main)
        self.dist.barrier()
        if state is not None:
            self.engine.save(tmp)
            if faults.injected("kill_in_save", self.step, self.dist.rank):
                os.kill(os.getpid(), signal.SIGKILL)
            if not self.dist.is_main:
                torch.save(checkpoint.rng_state(), checkpoint.rank_rng_file(tmp, self.dist.rank))
        with self.engine.full_weights() as weights:
            if self.dist.is_main:
                checkpoint.write_files(tmp, self.model, self.tokenizer, state, weights)
        self.dist.barrier()
        if self.dist.is_main:
            checkpoint.commit(tmp, directory)
        self.dist.barrier()
        return directory

    def find_resume_point(self) -> tuple[Path, dict[str, Any]] | None:
        """Before the model loads: `resume=auto` takes the newest checkpoint that reads back (one
        warning per one skipped, naming the file); a `resume=<dir>` that does not read back, or that
        another `dist.engine` wrote, fails."""
        resume = self.cfg.resume
        if not resume:
            return None
        if resume != "auto":
            try:
                found = Path(resume), checkpoint.load_valid_state(Path(resume))
            except checkpoint.CorruptCheckpoint as err:
                raise checkpoint.CorruptCheckpoint(f"resume={resume}: {err}") from None
        else:
            warn = tqdm.write if self.dist.is_main else (lambda line: None)
            found = checkpoint.latest_checkpoint(self.output_dir, warn, remove_unfinished=self.dist.is_main)
            self.dist.barrier()  # rank 0 removes unfinished writes before anyone saves again
            if found is None:
                warn(f"resume=auto: no checkpoint in {self.output_dir / 'checkpoints'}; starting fresh")
                return None
        directory, state = found
        if state.get("engine", self.cfg.dist.engine) != self.cfg.dist.engine:
            raise ValueError(f"resume={directory}: written with dist.engine={state['engine']}, resumed with "
                             f"dist.engine={self.cfg.dist.engine}; their optimizer states differ, resume with "
                             f"dist.engine={state['engine']}")
        return found

    def maybe_resume(self, found: tuple[Path, dict[str, Any]] | None) -> None:
        if found is None:
            return
        directory, state = found
        self.engine.load(directory, state)
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.skipped_steps, self.bad_streak = state.get("skipped_steps", 0), state.get("bad_streak", 0)
        self.resumed_from = directory
        # A rank's own stream when the same number of processes resumes; else rank 0's.
        own_rng = checkpoint.rank_rng_file(directory, self.dist.rank)
        checkpoint.set_rng_state(torch.load(own_rng, weights_only=True) if own_rng.is_file() else state["rng"])
        if self.dist.is_main:
            tqdm.write(f"resumed from {directory} at step {self.step}")

    def write_config(self) -> None:
        """config.yaml and its console echo, resolved, with secrets redacted (trainer/redact.py)."""
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            text = OmegaConf.to_yaml(redacted_config(self.cfg))
            (self.output_dir / "config.yaml").write_text(text, encoding="utf-8")
            tqdm.write(f"config:\n{text}")
