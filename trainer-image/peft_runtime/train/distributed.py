"""Several trainer processes, one run: PyTorch's own distributed runtime, started by torchrun (which sets
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT), in one pod or in one pod per node; nccl on GPUs,
gloo on CPU.

Data parallel with DDP's algorithm, written out: every rank holds the whole model (the same seed gives the
same adapter initialisation everywhere) and takes its own micro-batches of each step (`training.batchSize`
rows each, `gradientAccumulation` of them per process: a step's global batch is batchSize x
gradientAccumulation x processes rows), and after the step's backward passes the gradients are summed across
ranks before clipping and the update, so every rank makes the same update. Each rank divides its loss by the
step's loss tokens counted over all ranks: the summed gradient is then that of one process taking all the
step's micro-batches (gradientAccumulation x processes). (torch's DistributedDataParallel wrapper does the
same all-reduce, overlapped with backward; the gain is on GPUs, and the wrapper would stand between the loss
and the peft model it needs.) Rank 0 alone reports, evaluates, checkpoints and writes the adapter; every
rank resumes from the same checkpoint, with as many processes as before or not.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def total(self, value: float) -> float:
        """`value` summed over the ranks."""
        if self.world == 1:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(tensor)
        return float(tensor.item())

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (a stop signal must stop all of them at the same step)."""
        return self.total(1.0 if flag else 0.0) > 0

    def sum_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        if self.world == 1:
            return
        for parameter in parameters:
            if parameter.grad is None:  # a rank whose rows reached no such parameter still takes part
                parameter.grad = torch.zeros_like(parameter)
            dist.all_reduce(parameter.grad)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def process_rank() -> int:
    """This process's rank, readable before the process group exists (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def join_ranks(device: torch.device) -> Ranks:
    """The process group torchrun prepared, or a single rank when there is none."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size())


def leave_ranks() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
