"""Multi-process training through torchrun and PyTorch DDP: nothing home-made.

`torchrun --nproc_per_node N` sets RANK, LOCAL_RANK and WORLD_SIZE; with them set we join a process group
(gloo on CPU, NCCL on GPU) and wrap the model in DistributedDataParallel. Without them we run alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from tformer.errors import TformerError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; otherwise the named device, checked to exist."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise TformerError(f"device {requested!r} is not a device (use auto, cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TformerError(f"device {requested!r}: no CUDA device is available here (use auto or cpu)")
    if device.type not in ("cpu", "cuda"):
        raise TformerError(f"device {requested!r} is not supported (use auto, cpu or cuda)")
    return device


def launched() -> DistInfo:
    """This process's rank and the world size as torchrun set them (alone: rank 0 of 1), on the CPU; nothing
    is joined (see setup)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def setup(requested_device: str = "auto") -> DistInfo:
    """Join the torchrun process group when launched by torchrun; pick each process's device."""
    launch = launched()
    device = pick_device(requested_device)
    if not launch.enabled:
        return DistInfo(device=device)
    rank, world_size, local_rank = launch.rank, launch.world_size, launch.local_rank
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank, device)


def teardown(info: DistInfo, finished: bool = False) -> None:
    """Leave the process group. finished=True (every rank got to the end of the same work): wait for the others
    first and let go of what still holds the group (a DDP reducer in a reference cycle) before destroying it, so
    that no rank closes its connections while another still uses them; gloo then aborted a process now and then
    at exit ("terminate called without an active exception"). After an error, no waiting: the other ranks may
    never come."""
    if not (info.enabled and dist.is_initialized()):
        return
    if finished:
        import gc

        gc.collect()
        dist.barrier()
    dist.destroy_process_group()


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a few numbers over all ranks (for logging and validation); identity when alone."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def from_main(value: float, info: DistInfo) -> float:
    """Rank 0's value of a number on every rank (a clock reading, so that all stop at the same step)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.broadcast(t, src=0)
    return t.item()


def object_from_main(value, info: DistInfo):
    """Rank 0's value of a picklable object on every rank (validation metrics, which only rank 0 computes)."""
    if not info.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value, info: DistInfo) -> list:
    """Every rank's value of a picklable object, in rank order, on every rank."""
    if not info.enabled:
        return [value]
    out = [None] * info.world_size
    dist.all_gather_object(out, value)
    return out
