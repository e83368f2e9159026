"""Run under torchrun by tests/test_distributed.py: train with the given overrides, then let every
rank write the trainable weights it holds (gathered under ZeRO-3 and FSDP) to <dump>/rank<r>.safetensors.

Under FSDP, rank 0 also writes <dump>/optimizer_params.json: whether every optimizer parameter is one
of the sharded model's parameters; and after a resume <dump>/start_state.pt: the trainable weights and
optimizer state as loaded, gathered whole.

    torchrun --nproc_per_node 2 tests/dist_worker.py <dump_dir> [overrides...]
"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import compose  # noqa: E402
from trainer.loop import Trainer  # noqa: E402


def main() -> None:
    dump, overrides = Path(sys.argv[1]), sys.argv[2:]
    trainer = Trainer(compose(*overrides))
    if trainer.cfg.dist.engine == "fsdp":
        dump_fsdp_start(trainer, dump)
    trainer.train()
    with trainer.engine.full_weights():
        weights = {name: whole(p).detach().to("cpu", torch.float32).clone()
                   for name, p in trainer.model.named_parameters() if p.requires_grad}
    dump.mkdir(parents=True, exist_ok=True)
    save_file(weights, dump / f"rank{trainer.dist.rank}.safetensors")


def whole(param: torch.Tensor) -> torch.Tensor:
    """An FSDP parameter gathered from every rank's shard (collective); others as they are."""
    return param.full_tensor() if isinstance(param, DTensor) else param


def dump_fsdp_start(trainer: Trainer, dump: Path) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model = {id(p): p for p in trainer.model.parameters() if p.requires_grad}
    stepped = [p for group in trainer.engine.optimizer.param_groups for p in group["params"]]
    facts = {"all_sharded_model_params": all(id(p) in model and isinstance(p, DTensor) for p in stepped),
             "count": len(stepped), "trainable": len(model)}
    if trainer.dist.is_main:
        dump.mkdir(parents=True, exist_ok=True)
        (dump / "optimizer_params.json").write_text(json.dumps(facts))
    if trainer.resumed_from is None:
        return  # (a fresh optimizer has no state yet; gathering it would initialise it)
    weights, optimizer = get_state_dict(trainer.model, trainer.engine.optimizer, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True, ignore_frozen_params=True))
    if trainer.dist.is_main:
        torch.save({"model": weights, "optimizer": optimizer}, dump / "start_state.pt")


if __name__ == "__main__":
    main()
