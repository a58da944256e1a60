"""This process's place in a torchrun job, the collectives of the trainer and its seeding.

Without torchrun a process is rank 0 of 1 and the collectives return their input.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from umx.errors import UmxError


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        """Read torchrun's `RANK`, `WORLD_SIZE` and `LOCAL_RANK`."""
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )

    def all_sum(self, values: Tensor) -> Tensor:
        """Sum a tensor over all processes (itself without torchrun)."""
        if not self.enabled:
            return values
        summed = values.to(_collective_device())
        dist.all_reduce(summed)
        return summed.to(values.device)

    def all_gather(self, values: Tensor) -> list[Tensor]:
        """Every process's `values`, in rank order (just `values` without torchrun)."""
        if not self.enabled:
            return [values]
        local = values.to(_collective_device())
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        return [part.to(values.device) for part in parts]

    def check_on_main(self, check: Callable[[], None]) -> None:
        """Run `check` on rank 0 only (it reads what the other ranks may not see), and make
        every process raise when it fails: the others would otherwise go on into a
        collective that rank 0 never joins, and fail there with tracebacks of their own.

        Raises:
            UmxError: `check`'s error on every process (rank 0 raises its own exception).
        """
        failure, refusal = None, None
        if self.is_main:
            try:
                check()
            except Exception as error:  # the others learn of any error, not only a refusal
                failure = error
                refusal = str(error) if isinstance(error, UmxError) else repr(error)
        if self.enabled:
            shared = [refusal]
            dist.broadcast_object_list(shared, src=0)
            refusal = shared[0]
        if failure is not None:
            raise failure
        if refusal is not None:
            raise UmxError(refusal)


def _collective_device() -> torch.device:
    """NCCL exchanges GPU tensors only; gloo takes CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def seed_everything(seed: int, epoch: int, rank: int = 0) -> None:
    """Seed torch, numpy and `random` from `(seed, epoch, rank)`.

    The trainer reseeds at the start of every epoch, so the random state of an epoch depends on
    these three numbers only: a resumed run draws the same excerpts, augmentations and dropout
    masks as an uninterrupted one, and each process of a distributed run draws its own.
    """
    words = np.random.SeedSequence([seed, epoch, rank]).generate_state(2)
    state = int(words[0]) << 32 | int(words[1])
    torch.manual_seed(state)
    np.random.seed(int(words[0]))
    random.seed(state)
