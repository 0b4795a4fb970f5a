"""Harvesting activations and training SAEs on many processes with torch.distributed.

Launch the same script on every process (``torchrun --nproc-per-node N script.py`` or
``accelerate launch --num_processes N script.py``); :func:`harvest` splits the inputs by rank and
writes each rank's safetensors shards, :func:`open_harvest` checks the result and streams the
union of all ranks' shards, :func:`train_sae_distributed` trains one SAE with
DistributedDataParallel over them, resumable from its checkpoints. ``python -m
interventions.distributed`` (or ``interventions train-sae``) trains from the command line.
"""

from .harvesting import (
    Harvest,
    HarvestError,
    HarvestReport,
    Shard,
    ShardStream,
    harvest,
    items_of_rank,
    open_harvest,
)
from .ranks import init_from_env, rank_and_world
from .train import DDPSync, checkpoints, train_sae_distributed

__all__ = [
    "DDPSync",
    "Harvest",
    "HarvestError",
    "HarvestReport",
    "Shard",
    "ShardStream",
    "checkpoints",
    "harvest",
    "init_from_env",
    "items_of_rank",
    "open_harvest",
    "rank_and_world",
    "train_sae_distributed",
]
