"""One model on several GPUs (or CPU processes): torch.distributed, as ``torchrun`` launches it.

``torchrun --nproc-per-node 4 tools/train_fold.py --fold 0 ...`` starts one process per GPU with RANK, LOCAL_RANK
and WORLD_SIZE set; training then wraps the model in DistributedDataParallel (NCCL on GPUs, gloo on the CPU), each
rank draws its own patches (its own seed, ``samples_per_epoch / world_size`` of them), gradients are averaged
across ranks, and rank 0 alone validates, logs, draws and writes checkpoints (the same files as one process).
Batch-norm statistics are each rank's own during the step (as in the winners' torchrun training) and broadcast
from rank 0 before every EMA update, so the EMA weights are identical on every rank. Every collective has a
timeout (``train.dist_timeout_s``), and torchrun stops the other ranks when one fails, so no rank waits forever.

The effective batch is ``train.batch_size x world_size``; ``train.scale_lr: true`` multiplies ``train.lr`` by the
world size (the usual linear scaling). Without torchrun (WORLD_SIZE unset or 1) nothing here does anything.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: rank 0 of 1 without torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def environment_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def join(device: str, timeout_s: float) -> DistInfo:
    """Join the process group torchrun set up (NCCL when training on GPUs, gloo on the CPU); a single process
    gets the plain ``DistInfo()``."""
    world = environment_world_size()
    if world <= 1:
        return DistInfo()
    use_gpu = str(device) != "cpu" and torch.cuda.is_available()
    backend = "nccl" if use_gpu else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_gpu:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=float(timeout_s)))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, backend)


def training_device(info: DistInfo, device: str) -> str:
    """The device a rank trains on: its own GPU (LOCAL_RANK) under NCCL, else the configured one."""
    return f"cuda:{info.local_rank}" if info.backend == "nccl" else device


def rank_seed(seed: int, info: DistInfo) -> int:
    """Each rank its own patches; rank 0 keeps the single-process seed."""
    return seed + 1_000_003 * info.rank


def wrap(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module | None:
    """The model wrapped for gradient averaging across ranks (None in a single process)."""
    if not info.enabled:
        return None
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def broadcast_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank, so the EMA stays identical everywhere."""
    if info.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def agree(flag: bool, info: DistInfo) -> bool:
    """True on every rank when it is true on any (a time limit read from each rank's own clock)."""
    if not info.enabled:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if info.backend == "nccl":
        value = value.cuda()
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean(value: float, info: DistInfo) -> float:
    """The mean of ``value`` over ranks (the epoch's training loss of the whole job)."""
    if not info.enabled:
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64)
    if info.backend == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return float(tensor.item()) / info.world_size


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def leave(info: DistInfo) -> None:
    """Leave the process group at the end of training."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def rank_prefix() -> str:
    """'rank 1 of 4: ' in a torchrun job, '' otherwise: error messages say which rank failed."""
    world = environment_world_size()
    return f"rank {os.environ.get('RANK', '?')} of {world}: " if world > 1 else ""
