"""DistributedDataParallel under torchrun (gloo on CPU, NCCL on GPU); a no-op for one process."""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mha.inference.run import pick_device


class Distributed:
    """The process group, if torchrun started several processes; rank 0 alone writes files."""

    def __init__(self, rank: int = 0, world_size: int = 1,
                 device: torch.device | None = None) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device

    @classmethod
    def from_env(cls, device_name: str = "auto") -> Distributed:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        use_cuda = pick_device(device_name).type == "cuda"
        dist.init_process_group("nccl" if use_cuda else "gloo")
        device = torch.device("cpu")
        if use_cuda:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        return cls(dist.get_rank(), world_size, device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world_size == 1:
            return model
        device_ids = [self.device] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def no_sync(self, net: nn.Module):
        """Skip the gradient all-reduce on all but the last micro-batch of an update."""
        return net.no_sync() if self.world_size > 1 else contextlib.nullcontext()

    def sum_and_latest_clock(self, sums: Tensor, elapsed: float) -> tuple[Tensor, float]:
        """Sum `sums` (1-D) over processes and take the largest `elapsed`, in one all-reduce.

        Each process puts its clock in its own slot of the vector, so the summed vector holds
        every clock: a budget is spent for all when it is spent for one, and no process stops
        while the others wait for it in the next all-reduce.
        """
        if self.world_size == 1:
            return sums, elapsed
        n = len(sums)
        packed = torch.zeros(n + self.world_size, dtype=torch.float64, device=self.device)
        packed[:n] = sums
        packed[n + self.rank] = elapsed
        dist.all_reduce(packed)
        return packed[:n], packed[n:].max().item()

    def broadcast(self, *values: float) -> tuple[float, ...]:
        """Rank 0's values, on every process (as float64: exact for integers up to 2**53)."""
        if self.world_size == 1:
            return values
        packed = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.broadcast(packed, src=0)
        return tuple(packed.tolist())

    def gather(self, value: object) -> list:
        """Every process's `value` (any picklable object) on rank 0, rank 0 first; [] elsewhere."""
        if self.world_size == 1:
            return [value]
        gathered = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, gathered, dst=0)
        return gathered or []

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
