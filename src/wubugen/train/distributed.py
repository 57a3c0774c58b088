"""Process-group set-up for `torchrun` (real DDP: gradients are synchronised, rank 0 writes)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str = "auto") -> tuple[DistInfo, torch.device]:
    """Reads torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE). NCCL on CUDA, gloo on the CPU."""
    from wubugen.eval.device import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    chosen = resolve_device(device_pref)  # a device that does not exist is a one-line UserError here
    if world <= 1:
        return DistInfo(), chosen
    use_cuda = chosen.type == "cuda"
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        if local >= torch.cuda.device_count():
            from wubugen.errors import UserError

            raise UserError(f"torchrun local rank {local} has no GPU: this machine has {torch.cuda.device_count()}; "
                            "lower --nproc_per_node")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
    return DistInfo(rank, local, world), device


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj, info: DistInfo, src: int = 0):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
