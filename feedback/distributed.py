"""The data-parallel group of a training run: one process per GPU (or a few on the CPU), under torchrun.

``torchrun --nproc-per-node N -m feedback.train_job JOB`` starts N processes; each reads its
rank from the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and joins one
process group (NCCL between GPUs, Gloo on the CPU). Every optimizer step takes a global batch of
``batch_size`` examples per process; each process computes its contiguous share and
DistributedDataParallel averages the gradients. The loss is scaled so that the average equals the
gradient of the mean loss over the whole global batch's completion tokens, exactly what one
process computes on that batch: N processes train the same adapter as one, up to float rounding.
Only rank 0 writes checkpoints, the adapter and the result.

Without torchrun's environment the group is a single process and every method is the identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Group:
    """This process's place in the run: its rank among ``world`` processes, and its GPU's index."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes (checkpoints, the adapter, the result)."""
        return self.rank == 0

    def device(self, device: str) -> str:
        """This process's own GPU when training on CUDA with several processes."""
        return f"cuda:{self.local_rank}" if device == "cuda" and self.world > 1 else device

    def share(self, indices: list[int]) -> list[int]:
        """This process's contiguous share of a global batch (the first ranks take one more when it is uneven)."""
        size, extra = divmod(len(indices), self.world)
        start = self.rank * size + min(self.rank, extra)
        return indices[start : start + size + (self.rank < extra)]

    def totals(self, *values: float) -> list[float]:
        """The sum of each value over all processes, in one collective call."""
        if self.world == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor)
        return [float(v) for v in tensor.tolist()]

    def wrap(self, model: Any) -> Any:
        """The model that averages its gradients over the group (the model itself for one process)."""
        if self.world == 1:
            return model
        parameter = next(model.parameters())
        devices = [parameter.device.index] if parameter.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=devices)

    def leave(self) -> None:
        """Leave the process group (after every process has finished its last step)."""
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def join_group(device: str) -> Group:
    """The group torchrun's environment describes, joined; a group of one without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Group()
    group = Group(rank=int(os.environ["RANK"]), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if device == "cuda":
        torch.cuda.set_device(group.local_rank)
    # Gloo reduces CPU tensors, which the loss bookkeeping uses on GPUs too; NCCL carries the gradients there.
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device == "cuda" else "gloo")
    return group


def processes_for(requested: int, device: str) -> int:
    """Processes of a run: ``requested``, or for 0 one per visible GPU when training on CUDA (else one)."""
    if requested > 0:
        return requested
    return max(1, torch.cuda.device_count()) if device == "cuda" else 1
