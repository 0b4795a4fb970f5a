"""Which process this is: torch.distributed's rank and world size, or those torchrun and
``accelerate launch`` put in the environment, or one process."""

from __future__ import annotations

import os

import torch.distributed as dist


def rank_and_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: the arguments where given, else the initialised process group's,
    else ``$RANK`` / ``$WORLD_SIZE``, else ``(0, 1)``; refused when the rank is outside the world.

    >>> rank_and_world(1, 4)
    (1, 4)
    """
    if rank is None or world_size is None:
        if dist.is_available() and dist.is_initialized():
            found = dist.get_rank(), dist.get_world_size()
        else:
            found = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size} processes (ranks 0..{world_size - 1})")
    return rank, world_size


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Join the process group that torchrun / ``accelerate launch`` describe in the environment
    (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``), once; one process without them
    joins none. The backend defaults to NCCL with CUDA, gloo without. Returns ``(rank, world_size)``."""
    rank, world = rank_and_world()
    if world > 1 and not dist.is_initialized():
        import torch

        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
        dist.init_process_group(backend)
    return rank, world
