"""Run under torchrun by tests/test_distributed.py: train with the given overrides, then let every
rank write the trainable weights it holds (gathered under ZeRO-3) to <dump>/rank<r>.safetensors.

    torchrun --nproc_per_node 2 tests/dist_worker.py <dump_dir> [overrides...]
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import compose  # noqa: E402
from trainer.loop import Trainer  # noqa: E402


def main() -> None:
    dump, overrides = Path(sys.argv[1]), sys.argv[2:]
    trainer = Trainer(compose(*overrides))
    trainer.train()
    with trainer.engine.full_weights():
        weights = {name: p.detach().to("cpu", torch.float32).clone()
                   for name, p in trainer.model.named_parameters() if p.requires_grad}
    dump.mkdir(parents=True, exist_ok=True)
    save_file(weights, dump / f"rank{trainer.dist.rank}.safetensors")


if __name__ == "__main__":
    main()
