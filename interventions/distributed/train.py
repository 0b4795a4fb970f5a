"""SAE training with DistributedDataParallel over a harvest's shards, resumable from checkpoints.

Each rank streams its own shards (every ``world_size``-th one of the union, after the held-out
ones that every rank evaluates on) through :func:`interventions.sae_train.train_sae`; a
:class:`DDPSync` keeps the replicas in step. DDP averages the gradients: the TopK step writes its
gradients by hand (autograd's ``embedding_bag`` backward was half of a CPU step), so they reach
DDP's bucketed all-reduce through a surrogate loss ``sum(p * g)`` whose gradient is exactly ``g``.
The averaged gradient then loses its part parallel to the decoder rows and the decoder is
renormalised on every rank alike, so the replicas stay bit-identical (checked at each
checkpoint). The latents that fired, the token count and the loss are summed over the ranks in
one more all-reduce, so the dead-latent window counts every rank's tokens; while latents are dead,
the AuxK loss is scaled by the residual variance of all ranks' batches (a third, small all-reduce).

With batch ``B`` per rank on ``N`` ranks, a step is the single-process step on a batch of ``N * B``
(the union of the ranks' batches), up to float rounding.

Checkpoints (rank 0 writes them; every rank reads them) are a folder per step: ``state.safetensors``
(weights, Adam moments, the dead-latent counters, losses) and ``state.json`` (step, tokens, world
size, the SAE's shape and the run's settings). Resuming replays the data stream to the
checkpoint's step without training on it, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..durable import fsync, publish
from ..layout import to_tokens
from ..sae import SAE, Kind, SAEInfo
from ..sae_train import TrainConfig, TrainReport, TrainState, train_sae
from .harvesting import Harvest, HarvestError, open_harvest
from .ranks import rank_and_world

CHECKPOINT_FORMAT = "interventions.sae-checkpoint/1"


class _Surrogate(nn.Module):
    """The module DDP wraps: its forward is ``sum(p * g)`` over the SAE's trainable parameters,
    whose gradient with respect to ``p`` is the given ``g`` (that DDP then averages)."""

    def __init__(self, sae: SAE) -> None:
        super().__init__()
        self.sae = sae

    def forward(self, grads: list[Tensor]) -> Tensor:
        params = [p for p in self.sae.parameters() if p.requires_grad]
        return torch.stack([(p * g).sum() for p, g in zip(params, grads, strict=True)]).sum()


class DDPSync:
    """:class:`~interventions.sae_train.TrainSync` over torch.distributed (also in one process,
    for checkpoints): DDP for the gradients, one all-reduce for the step's statistics.

    ``bytes_per_step`` counts what this rank handed to the collectives in the last step (DDP's
    gradient buckets and the statistics), measured by a DDP communication hook.
    ``bf16_gradients`` all-reduces the gradients in bfloat16 (DDP's ``bf16_compress_hook``): half
    the bytes, for gradients rounded to 8 significant bits before they are averaged (the run then
    equals a single process only to that rounding)."""

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        *,
        every: int = 0,
        keep: int = 2,
        settings: dict[str, Any] | None = None,
        bf16_gradients: bool = False,
    ) -> None:
        self.rank, self.world_size = rank_and_world()
        self.bf16_gradients = bf16_gradients
        self.distributed = self.world_size > 1
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.every, self.keep = every, keep
        self.settings = settings or {}
        self.bytes_per_step = 0
        self._step_bytes = 0
        self._ddp: nn.Module | None = None

    # -- TrainSync -------------------------------------------------------------------------------
    def start(self, sae: SAE, opt: torch.optim.Optimizer) -> TrainState | None:
        resumed = self._load(sae, opt) if self.checkpoint_dir is not None else None
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [sae.W_dec.device] if sae.W_dec.device.type == "cuda" else None
            # constructing DDP broadcasts rank 0's parameters: every replica starts alike
            ddp = DistributedDataParallel(_Surrogate(sae), device_ids=device_ids)
            ddp.register_comm_hook(self, _counting_bf16_allreduce if self.bf16_gradients else _counting_allreduce)
            self._ddp = ddp
        return resumed

    def gradients(self, sae: SAE) -> None:
        if self._ddp is None:
            return
        params = [p for p in sae.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        for p in params:
            p.grad = None
        self._ddp([g.detach() for g in grads]).backward()

    def step_stats(self, fired: Tensor, tokens: int, loss: Tensor) -> tuple[Tensor, int, Tensor]:
        if not self.distributed:
            return fired, tokens, loss
        stats = torch.cat(
            [fired.double(), torch.tensor([tokens, float(loss)], dtype=torch.float64, device=fired.device)]
        )
        dist.all_reduce(stats)
        self._step_bytes += stats.nbytes
        return stats[:-2] > 0, int(stats[-2]), (stats[-1] / self.world_size).to(loss.dtype)

    def residual_variance(self, err: Tensor) -> Tensor:
        if not self.distributed:
            return err.var(dim=0).sum()
        n = torch.tensor([err.shape[0]], dtype=torch.float64, device=err.device)
        stats = torch.cat([err.double().sum(0), err.double().pow(2).sum(0), n])
        dist.all_reduce(stats)
        self._step_bytes += stats.nbytes
        d, total = err.shape[1], stats[-1]
        mean = stats[:d] / total
        return ((stats[d : 2 * d] - total * mean * mean).sum() / (total - 1)).to(err.dtype)

    def step_done(self, state: TrainState, sae: SAE, opt: torch.optim.Optimizer) -> None:
        self.bytes_per_step, self._step_bytes = self._step_bytes, 0
        last = state.step == self.settings.get("steps")
        if self.checkpoint_dir is not None and ((self.every and state.step % self.every == 0) or last):
            self._check_replicas(sae)
            if self.rank == 0:
                self._save(state, sae, opt)
            if self.distributed:
                dist.barrier()  # no rank runs ahead of a checkpoint it may need to resume from

    # -- replicas --------------------------------------------------------------------------------
    def _check_replicas(self, sae: SAE) -> None:
        """Refuse replicas that drifted apart (they would average gradients of different models)."""
        if not self.distributed:
            return
        total = torch.stack([p.detach().double().sum() for p in sae.parameters()])
        low, high = total.clone(), total.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if not torch.equal(low, high):
            raise RuntimeError(
                "the SAE replicas differ across ranks (a nondeterministic kernel or a rank with other data "
                "shapes): rerun with deterministic algorithms"
            )

    # -- checkpoints -----------------------------------------------------------------------------
    def _save(self, state: TrainState, sae: SAE, opt: torch.optim.Optimizer) -> None:
        assert self.checkpoint_dir is not None
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        final = self.checkpoint_dir / f"step-{state.step:08d}"
        tmp = self.checkpoint_dir / f".{final.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        tensors = {f"sae.{name}": p.detach().cpu().contiguous() for name, p in sae.named_parameters()}
        names = {id(p): name for name, p in sae.named_parameters()}
        for p, moments in opt.state.items():
            for what, value in moments.items():
                tensors[f"adam.{names[id(p)]}.{what}"] = torch.as_tensor(value).detach().cpu().contiguous()
        tensors["since_fired"] = state.since_fired.cpu()
        tensors["losses"] = torch.stack(state.losses).float().cpu() if state.losses else torch.zeros(0)
        save_file(tensors, str(tmp / "state.safetensors"))
        meta = {
            "format": CHECKPOINT_FORMAT,
            "step": state.step,
            "tokens_seen": state.tokens_seen,
            "world_size": self.world_size,
            "sae": {"d_in": sae.d_in, "d_sae": sae.d_sae, "kind": sae.kind, "k": sae.k},
            "settings": self.settings,
        }
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))
        for f in ("state.safetensors", "state.json"):
            fsync(tmp / f)
        publish(tmp, final)
        for old in checkpoints(self.checkpoint_dir)[: -self.keep]:
            shutil.rmtree(old)

    def _load(self, sae: SAE, opt: torch.optim.Optimizer) -> TrainState | None:
        assert self.checkpoint_dir is not None
        found = checkpoints(self.checkpoint_dir)
        if not found:
            return None
        folder = found[-1]
        meta = json.loads((folder / "state.json").read_text())
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{folder} is not an SAE training checkpoint ({CHECKPOINT_FORMAT})")
        shape = {"d_in": sae.d_in, "d_sae": sae.d_sae, "kind": sae.kind, "k": sae.k}
        mine = {"world_size": self.world_size, "sae": shape, "settings": self.settings}
        theirs = {k: meta[k] for k in mine}
        if theirs != mine:
            differ = [k for k in mine if theirs[k] != mine[k]]
            raise ValueError(
                f"{folder} was written by another run ({', '.join(f'{k}: {theirs[k]} vs {mine[k]}' for k in differ)}): "
                "resume with the same processes, SAE and settings, or pass a new checkpoint folder"
            )
        tensors = load_file(str(folder / "state.safetensors"), device=str(sae.W_dec.device))
        with torch.no_grad():
            for name, p in sae.named_parameters():
                p.copy_(tensors[f"sae.{name}"])
        saved = opt.state_dict()
        state: dict[int, dict[str, Tensor]] = {}
        for i, (name, p) in enumerate(sae.named_parameters()):  # the optimiser's order: sae.parameters()
            if f"adam.{name}.step" in tensors:
                moments = {key.rsplit(".", 1)[1]: t for key, t in tensors.items() if key.startswith(f"adam.{name}.")}
                # each moment laid out as its parameter (W_enc is a transposed view): fused Adam expects that
                state[i] = {what: t if what == "step" else torch.empty_like(p).copy_(t) for what, t in moments.items()}
        saved["state"] = state
        opt.load_state_dict(saved)
        losses = list(tensors["losses"].unbind()) if tensors["losses"].numel() else []
        return TrainState(meta["step"], meta["tokens_seen"], tensors["since_fired"], losses)


def _counting_allreduce(sync, bucket):  # type: ignore[no-untyped-def]
    """DDP's own averaging all-reduce, counting the bytes of each gradient bucket it sends. (No
    annotations: DDP checks them at run time, and postponed ones are strings that fail its check.)"""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    sync._step_bytes += bucket.buffer().nbytes
    return allreduce_hook(None, bucket)


def _counting_bf16_allreduce(sync, bucket):  # type: ignore[no-untyped-def]
    """DDP's bfloat16 all-reduce (the bucket cast to bf16, averaged, cast back), counting its bytes."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook

    sync._step_bytes += bucket.buffer().numel() * 2
    return bf16_compress_hook(None, bucket)


def checkpoints(folder: str | os.PathLike[str]) -> list[Path]:
    """The checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    return (
        sorted(p for p in folder.glob("step-*") if p.is_dir() and (p / "state.json").exists())
        if folder.is_dir()
        else []
    )


def train_sae_distributed(
    harvest: Harvest | str | os.PathLike[str],
    d_sae: int,
    kind: Kind = "topk",
    k: int = 32,
    *,
    site: str | None = None,
    layout: str | None = None,
    branch: str | None | bool = False,
    steps: Iterable[int] | None = None,
    config: TrainConfig | None = None,
    eval_shards: int = 1,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 0,
    info: SAEInfo | None = None,
    bf16_gradients: bool = False,
    sync: DDPSync | None = None,
) -> tuple[SAE, TrainReport]:
    """Train an SAE on a harvest with every process of the job (``torchrun --nproc-per-node N``;
    one process without it). ``config.batch_size`` is per rank: a step sees ``N`` times as many tokens.

    ``branch`` / ``steps`` keep one CFG branch and some denoising steps (``branch=False``: any).
    The first ``eval_shards`` shards are held out on every rank (they set ``b_dec`` and the loss
    scale, and the report's FVU); rank ``r`` trains on every ``N``-th of the others from ``r``.
    With ``checkpoint_dir``, a checkpoint is written every ``checkpoint_every`` steps and at the
    end, and a run finds the latest one there and resumes from it. ``bf16_gradients`` halves the
    bytes each step all-reduces (:class:`DDPSync`).

    >>> import tempfile
    >>> from interventions.distributed import harvest
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16))
    >>> root = tempfile.mkdtemp()
    >>> _ = harvest(model, [torch.randn(64, 8) for _ in range(6)], "0", root, items_per_shard=1, progress=False)
    >>> cfg = TrainConfig(steps=20, batch_size=32, lr=1e-2, shuffle_tokens=64, progress=False)
    >>> sae, report = train_sae_distributed(root, d_sae=32, k=4, config=cfg)
    >>> report.steps, report.tokens_seen
    (20, 640)
    """
    cfg = config or TrainConfig()
    source = harvest if isinstance(harvest, Harvest) else open_harvest(harvest)
    site = source.resolve_site(site)
    sync = sync or DDPSync(checkpoint_dir, every=checkpoint_every, bf16_gradients=bf16_gradients)
    steps = None if steps is None else sorted(steps)
    sync.settings = sync.settings or _settings(cfg, site, eval_shards, branch, steps)
    rank, world = sync.rank, sync.world_size
    if world > 1 and cfg.epochs is not None:
        raise ValueError(
            "distributed training cycles its shards until config.steps (epochs=None): ranks must step together"
        )
    mine = source.split(rank, world, skip=eval_shards)
    if not mine or eval_shards < 1 or len(source.shards) < eval_shards:
        raise HarvestError(
            f"{source.root} has {len(source.shards)} shards: {eval_shards} held out for evaluation leave "
            f"{max(len(source.shards) - eval_shards, 0)} for {world} ranks; harvest with a smaller items_per_shard"
        )
    held_parts = source.tokens(site, shards=source.shards[:eval_shards], branch=branch, steps=steps)
    held = [to_tokens(t, layout) for t in held_parts]
    if not held:
        raise HarvestError(
            f"the {eval_shards} held-out shard(s) hold no activations of {site!r} (branch {branch!r}, steps {steps})"
        )
    if rank != 0:
        cfg = TrainConfig(**{**asdict(cfg), "progress": False})
    window = "all" if branch is False else str(branch)
    info = info or SAEInfo(site=site, layout=layout, branch=window, steps=steps)
    return train_sae(
        source.tokens(site, shards=mine, branch=branch, steps=steps),
        d_sae,
        kind,
        k,
        layout=layout,
        config=cfg,
        info=info,
        held_out=torch.cat(held),
        sync=sync,
    )


def _settings(
    cfg: TrainConfig, site: str, eval_shards: int, branch: str | None | bool, steps: list[int] | None
) -> dict[str, Any]:
    """What a checkpoint must agree with to be resumed (JSON-safe)."""
    kept = {k: v for k, v in asdict(cfg).items() if k not in ("progress", "device", "dtype")}
    return {**kept, "site": site, "eval_shards": eval_shards, "branch": branch, "only_steps": steps}
