"""torch.distributed for a run under ``torchrun`` (a no-op object otherwise) (no Qt)."""

from __future__ import annotations

import math
import os

import torch

from napari_vnet.runtime import resolve_device

__all__ = ["Distributed", "unwrap"]


class Distributed:
    """torch.distributed state of the run (a no-op object when not distributed)."""

    def __init__(self, device_name: str):
        import torch.distributed as dist

        self.dist = dist
        self.created = False
        world = int(os.environ.get("WORLD_SIZE", "1"))
        self.enabled = dist.is_available() and (dist.is_initialized() or world > 1)
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(device_name, self.local_rank)
        if self.enabled and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend=backend)
            self.created = True
        self.rank = dist.get_rank() if self.enabled else 0
        self.world = dist.get_world_size() if self.enabled else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any rank."""
        if not self.enabled:
            return flag
        comm_device = self.device if self.device.type == "cuda" else torch.device("cpu")
        t = torch.tensor([1.0 if flag else 0.0], device=comm_device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def broadcast(self, value: float | None) -> float | None:
        """Rank 0's value on every rank (None travels as NaN)."""
        if not self.enabled:
            return value
        comm_device = self.device if self.device.type == "cuda" else torch.device("cpu")
        t = torch.tensor([math.nan if value is None else float(value)], device=comm_device)
        self.dist.broadcast(t, src=0)
        v = float(t.item())
        return None if math.isnan(v) else v

    def barrier(self) -> None:
        if self.enabled:
            self.dist.barrier()

    def close(self) -> None:
        if self.created and self.dist.is_initialized():
            self.dist.destroy_process_group()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model
