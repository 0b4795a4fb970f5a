"""Train an SAE on activations streamed from a store (or a tensor), with bounded memory.

Tokens come from the store entries one at a time (``DiskStore`` reads one appended part at a
time), pass through a shuffle buffer, and are consumed in batches. ``eval_tokens`` tokens, drawn
at random from the first ``shuffle_tokens`` of the stream (from all of it, for a smaller source),
are held out to initialise ``b_dec`` (geometric median) and to report FVU, L0 and the dead
fraction; a finite source cycled for several passes skips them on every pass. TopK/BatchTopK
train with the AuxK loss on dead latents (Gao et al. 2024), ReLU with an L1 penalty weighted by
decoder norms, JumpReLU with a straight-through L0 penalty
(Rajamanoharan et al. 2024). Decoder rows stay at unit norm.

>>> from interventions.sae_train import TrainConfig, train_sae
>>> x = torch.randn(8192, 16) @ torch.randn(16, 16)
>>> cfg = TrainConfig(steps=300, batch_size=256, lr=3e-3, eval_tokens=1024, progress=False)
>>> sae, report = train_sae(x, d_sae=64, kind="topk", k=8, config=cfg)
>>> report.fvu < 0.2  # on the 1,024 held-out tokens
True
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .layout import to_tokens
from .sae import SAE, Kind, SAEInfo, fvu, geometric_median, l0
from .store import Store

TokenSource = Tensor | Store | Iterable[Tensor]


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 1024
    lr: float = 4e-4
    warmup_steps: int = 50
    decay_start: float = 0.8  # linear decay to 0 over the last 20% of steps
    seed: int = 0
    aux_coeff: float = 1 / 32
    aux_k: int | None = None  # default: d_in // 2
    dead_tokens: int = 100_000  # a latent silent for this many tokens is dead
    l1_coeff: float = 5.0  # relu
    l0_coeff: float = 1e-3  # jumprelu
    bandwidth: float = 1e-3  # jumprelu straight-through kernel width
    shuffle_tokens: int = 65_536
    eval_tokens: int = 4096
    epochs: int | None = None  # passes over a finite source; None: cycle until ``steps``
    progress: bool = True


@dataclass
class TrainReport:
    fvu: float
    l0: float
    dead_fraction: float
    tokens_seen: int
    steps: int
    losses: list[float] = field(default_factory=list)

    def __str__(self) -> str:
        return f"FVU {self.fvu:.4f}, L0 {self.l0:.1f}, dead {self.dead_fraction:.1%}, {self.tokens_seen} tokens, {self.steps} steps"


def iter_tokens(
    source: TokenSource,
    *,
    layout: str | None = None,
    site: str | None = None,
    branch: str | None | bool = False,
    steps: Iterable[int] | None = None,
) -> Iterator[Tensor]:
    """Token matrices ``[n, d]`` from a tensor, an iterable of tensors or a store (optionally
    only one site, one branch and some steps; ``branch=False`` means any branch)."""
    if isinstance(source, Tensor):
        yield to_tokens(source, layout)
        return
    if hasattr(source, "keys") and hasattr(source, "get"):
        wanted = set(steps) if steps is not None else None
        for key in source.keys():  # type: ignore[union-attr]
            s, step, b = key[:3]  # every invocation of a module used more than once
            if (site is None or s == site) and (branch is False or b == branch) and (wanted is None or step in wanted):
                # one appended part at a time: a DiskStore key may hold many prompts' activations
                parts = source.parts(key) if hasattr(source, "parts") else [source.get(key)]  # type: ignore[union-attr]
                for part in parts:
                    yield to_tokens(part, layout)
        return
    for t in source:  # type: ignore[union-attr]
        yield to_tokens(t, layout)


def _batches(chunks: Iterator[Tensor], cfg: TrainConfig, gen: torch.Generator) -> Iterator[Tensor]:
    """Shuffle tokens within a buffer of ``cfg.shuffle_tokens`` and cut it into batches."""
    buffer: list[Tensor] = []
    size = 0
    for chunk in chunks:
        buffer.append(chunk.float())
        size += chunk.shape[0]
        if size >= cfg.shuffle_tokens:
            tokens = torch.cat(buffer)
            tokens = tokens[torch.randperm(size, generator=gen)]
            full = size // cfg.batch_size * cfg.batch_size
            yield from tokens[:full].split(cfg.batch_size)
            buffer, size = [tokens[full:]], size - full
    if size:
        tokens = torch.cat(buffer)
        yield from tokens[torch.randperm(size, generator=gen)].split(cfg.batch_size)


class _JumpReLU(torch.autograd.Function):
    """z = pre * H(pre - theta); d/dtheta through a rectangle kernel of width ``bandwidth``."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        kernel = ((pre - theta).abs() < eps / 2).to(grad.dtype) / eps
        return grad * (pre > theta), (-theta * kernel * grad).sum(0), None


class _Step(torch.autograd.Function):
    """H(pre - theta) with the same straight-through gradient for theta (the L0 penalty)."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        kernel = ((pre - theta).abs() < eps / 2).to(grad.dtype) / eps
        return None, (-kernel * grad).sum(0), None


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    start = int(cfg.decay_start * cfg.steps)
    if step >= start:
        return max(0.0, (cfg.steps - step) / max(cfg.steps - start, 1))
    return 1.0


def train_sae(
    source: TokenSource,
    d_sae: int,
    kind: Kind = "topk",
    k: int = 32,
    *,
    layout: str | None = None,
    site: str | None = None,
    branch: str | None | bool = False,
    config: TrainConfig | None = None,
    info: SAEInfo | None = None,
) -> tuple[SAE, TrainReport]:
    """Train an SAE of ``d_sae`` latents on tokens from ``source``; returns it and its report."""
    cfg = config or TrainConfig()
    gen = torch.Generator().manual_seed(cfg.seed)

    def one_pass() -> Iterator[Tensor]:
        return iter_tokens(source, layout=layout, site=site, branch=branch)

    first = one_pass()
    head, straddling = _read_head(first, max(cfg.shuffle_tokens, cfg.eval_tokens))
    n_head = head.shape[0]
    if n_head == 0:
        raise ValueError(f"no activations to train on (site={site!r}, branch={branch!r}): is the store empty?")
    if n_head < cfg.eval_tokens:
        raise ValueError(
            f"the source holds {n_head} tokens, fewer than the {cfg.eval_tokens} held out for evaluation: "
            "lower TrainConfig.eval_tokens or pass more activations"
        )
    held = torch.randperm(n_head, generator=gen)[: cfg.eval_tokens].sort().values
    kept = torch.ones(n_head, dtype=torch.bool)
    kept[held] = False
    eval_x = head[held].float()

    def chunks() -> Iterator[Tensor]:
        yield head[kept]
        if straddling is not None:
            yield straddling
        yield from first  # the rest of the first pass
        passes = 1
        while cfg.epochs is None or passes < cfg.epochs:
            yielded = False
            for chunk in _without(one_pass(), held):  # the hold-out stays held out on every pass
                yielded = True
                yield chunk
            if not yielded:
                return  # nothing beyond the hold-out: the step == 0 check below says so
            passes += 1

    d_in = eval_x.shape[1]
    info = info or SAEInfo(site=site or "", layout=layout, branch="all" if branch is False else str(branch))
    sae = SAE(d_in, d_sae, kind, k, info=info, seed=cfg.seed).to(eval_x.device)  # train where the tokens are
    with torch.no_grad():
        sae.b_dec.copy_(geometric_median(eval_x))
        if kind == "jumprelu":
            sae.threshold.fill_(float(eval_x.std()) * 0.1)
    variance = eval_x.var(dim=0).sum().clamp_min(1e-12)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    aux_k = cfg.aux_k or max(d_in // 2, 1)
    since_fired = torch.zeros(d_sae, dtype=torch.long, device=eval_x.device)
    losses: list[float] = []
    tokens_seen = 0
    bar = tqdm(total=cfg.steps, desc=f"SAE {kind} d_sae={d_sae}", disable=not cfg.progress)
    step = 0
    for x in _batches(chunks(), cfg, gen):
        if step >= cfg.steps:
            break
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(step, cfg)
        loss, fired = _loss(sae, x, cfg, variance, since_fired, aux_k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _remove_parallel_grad(sae)
        opt.step()
        sae.normalize_decoder()
        if kind == "jumprelu":
            with torch.no_grad():
                sae.threshold.clamp_(min=1e-6)
        since_fired = torch.where(fired, 0, since_fired + x.shape[0])
        tokens_seen += x.shape[0]
        losses.append(loss.item())
        step += 1
        if step % 25 == 0 or step == cfg.steps:
            bar.set_postfix(
                loss=f"{losses[-1]:.4f}", dead=f"{float((since_fired > cfg.dead_tokens).float().mean()):.1%}"
            )
        bar.update(1)
    bar.close()
    if step == 0:
        raise ValueError("the source held no tokens beyond the evaluation hold-out; pass more activations")
    with torch.no_grad():
        z = sae.encode(eval_x)
        report = TrainReport(
            fvu=fvu(eval_x, sae.decode(z)),
            l0=l0(z),
            dead_fraction=float((since_fired > cfg.dead_tokens).float().mean())
            if tokens_seen > cfg.dead_tokens
            else float((~(z != 0).any(0)).float().mean()),
            tokens_seen=tokens_seen,
            steps=step,
            losses=losses,
        )
    sae.eval()
    return sae, report


def _read_head(chunks: Iterator[Tensor], n: int) -> tuple[Tensor, Tensor | None]:
    """The first ``n`` tokens of ``chunks`` (all of them if fewer) as one tensor, and the rest of
    the chunk that straddles token ``n`` (None if none did)."""
    got: list[Tensor] = []
    size = 0
    for chunk in chunks:
        need = n - size
        got.append(chunk[:need])
        size += got[-1].shape[0]
        if chunk.shape[0] > need:
            return torch.cat(got), chunk[need:]
        if size == n:
            break
    return (torch.cat(got) if got else torch.zeros(0, 0)), None


def _without(chunks: Iterator[Tensor], positions: Tensor) -> Iterator[Tensor]:
    """``chunks`` with the tokens at the sorted ``positions`` (counted from the first) left out."""
    last = int(positions[-1]) if positions.numel() else -1
    offset = 0
    for chunk in chunks:
        n = chunk.shape[0]
        if offset <= last:  # past the last position, the rest of the pass goes through untouched
            inside = positions[(positions >= offset) & (positions < offset + n)] - offset
            if inside.numel():
                keep = torch.ones(n, dtype=torch.bool)
                keep[inside] = False
                chunk = chunk[keep]
        offset += n
        if chunk.shape[0]:
            yield chunk


def _loss(
    sae: SAE, x: Tensor, cfg: TrainConfig, variance: Tensor, since_fired: Tensor, aux_k: int
) -> tuple[Tensor, Tensor]:
    pre = sae.pre_acts(x)
    if sae.kind == "topk":  # decode from the k active latents only (as sparsify does): ~5x cheaper
        top = pre.topk(sae.k, dim=-1)
        values = torch.relu(top.values)
        x_hat = F.embedding_bag(top.indices, sae.W_dec, per_sample_weights=values, mode="sum") + sae.b_dec
        fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=x.device).index_fill_(
            0, top.indices.flatten()[values.flatten() > 0], True
        )
    else:
        z = (
            _JumpReLU.apply(pre, sae.threshold, cfg.bandwidth)
            if sae.kind == "jumprelu"
            else sae.activate(pre, batch_topk=True)
        )
        x_hat = sae.decode(z)
        fired = (z != 0).any(dim=0)
    err = x - x_hat
    loss = err.pow(2).sum(-1).mean() / variance
    if sae.kind == "relu":
        loss = loss + cfg.l1_coeff * (z * sae.W_dec.norm(dim=-1)).sum(-1).mean() / variance.sqrt()
    elif sae.kind == "jumprelu":
        loss = loss + cfg.l0_coeff * _Step.apply(pre, sae.threshold, cfg.bandwidth).sum(-1).mean()
    else:
        dead = since_fired > cfg.dead_tokens
        if dead.any():
            k_aux = min(aux_k, int(dead.sum()))
            dead_pre = torch.where(dead, torch.relu(pre), torch.zeros_like(pre))
            top = dead_pre.topk(k_aux, dim=-1)
            z_aux = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
            e_hat = z_aux @ sae.W_dec
            target = err.detach()
            aux = (e_hat - target).pow(2).sum(-1).mean() / target.var(dim=0).sum().clamp_min(1e-12)
            loss = loss + cfg.aux_coeff * torch.nan_to_num(aux)
    return loss, fired


def _remove_parallel_grad(sae: SAE) -> None:
    """Project out the part of the decoder gradient that would only change row norms."""
    g = sae.W_dec.grad
    if g is not None:
        w = sae.W_dec.data
        g.sub_((g * w).sum(-1, keepdim=True) * w)
