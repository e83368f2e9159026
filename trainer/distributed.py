"""Process-group facts the loop needs: who am I, how many are we, and summing across us.

Works unchanged under `python launch/train.py` (one process, no group) and torchrun.
"""
from __future__ import annotations

import atexit
import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (returns the input unchanged on one process)."""
        if not self.enabled:
            return tensor
        moved = tensor.to(self.device)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        return moved.to(tensor.device)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device: str = "auto", backend: str = "auto", timeout_minutes: float = 30,
                     always: bool = False) -> DistContext:
    """Join the process group torchrun (or Slurm, see `slurm_to_torchrun_env`) describes in the
    environment, if there is one; with `always`, make a one-process group when there is none.

    A collective that waits longer than `timeout_minutes` (a dead rank, a lost node) raises
    instead of hanging, so the job fails within a bounded time.
    """
    slurm_to_torchrun_env()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if (world > 1 or always) and not dist.is_initialized():
        chosen = backend if backend != "auto" else ("nccl" if use_cuda else "gloo")
        timeout = datetime.timedelta(minutes=timeout_minutes)
        # Without a launcher's environment: a group of one on a free local port (DeepSpeed reads LOCAL_RANK).
        where = (elastic_attempt_store(rank, world, timeout) if "RANK" in os.environ
                 else {"init_method": f"tcp://127.0.0.1:{free_port()}", "rank": 0, "world_size": 1})
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
        dist.init_process_group(chosen, timeout=timeout, device_id=dev if chosen == "nccl" else None, **where)
        # One group for the life of the process: torchrun's store cannot host a second one, so
        # the jobs of a multirun share it and it is destroyed only at exit.
        atexit.register(shutdown_distributed)
    return DistContext(rank, local_rank, world, dev)


def elastic_attempt_store(rank: int, world: int, timeout: datetime.timedelta) -> dict:
    """Under torchrun, the agent's store with a prefix of its own per restart (`--max-restarts`); else {}
    (env://). The agent keeps one store across restarts, and torch 2.13's env:// adds no prefix, so a
    restarted group would read the previous attempt's gloo addresses and fail to connect."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=timeout)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return {"store": dist.PrefixStore(f"turnpack/attempt_{attempt}", agent), "rank": rank, "world_size": world}


def broadcast_from_main(value: str) -> str:
    """Rank 0's `value` on every rank (the value itself outside a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def slurm_to_torchrun_env() -> None:
    """Inside a job submitted by hydra-submitit-launcher (`hydra/launcher=slurm`, one task per GPU;
    or `submitit_local`, its single-machine twin), export what torchrun would have: RANK,
    LOCAL_RANK, WORLD_SIZE, MASTER_ADDR (the first node), MASTER_PORT (from the job id).

    Nothing happens under torchrun (RANK is set) or outside submitit's jobs.
    """
    if "RANK" in os.environ or os.environ.get("SUBMITIT_EXECUTOR") not in ("slurm", "local"):
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
