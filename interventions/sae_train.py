"""Train an SAE on activations streamed from a store (or a tensor), with bounded memory.

Tokens come from the store entries one at a time (``DiskStore`` reads one appended part at a
time), pass through a shuffle buffer, and are consumed in batches. ``eval_tokens`` tokens, drawn
at random from the first ``shuffle_tokens`` of the stream (from all of it, for a smaller source),
are held out to initialise ``b_dec`` (geometric median) and to report FVU, L0 and the dead
fraction; a finite source cycled for several passes skips them on every pass. TopK/BatchTopK
train with the AuxK loss on dead latents (Gao et al. 2024), ReLU with an L1 penalty weighted by
decoder norms, JumpReLU with a straight-through L0 penalty
(Rajamanoharan et al. 2024). Decoder rows stay at unit norm.

Every loss is divided by the tokens' variance, so the defaults hold at any activation scale; the
ReLU penalty's default ``1/sqrt(d_in)`` is SAELens' ``l1_coefficient=1`` on activations scaled to
norm ``sqrt(d_in)``. Training runs on ``TrainConfig.device`` (default: where the tokens are) and
every tensor is created there; matmuls run in ``TrainConfig.dtype`` (bf16 autocast by default on
CUDA, as sparsify does); parameters and optimiser state stay float32.

>>> from interventions.sae_train import TrainConfig, train_sae
>>> x = torch.randn(8192, 16) @ torch.randn(16, 16)
>>> cfg = TrainConfig(steps=300, batch_size=256, lr=3e-3, eval_tokens=1024, progress=False)
>>> sae, report = train_sae(x, d_sae=64, kind="topk", k=8, config=cfg)
>>> report.fvu < 0.2  # on the 1,024 held-out tokens
True
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .layout import to_tokens
from .sae import SAE, Kind, SAEInfo, fvu, geometric_median, l0
from .store import Store

TokenSource = Tensor | Store | Iterable[Tensor]


@dataclass
class TrainState:
    """Where a run stands after a step: what a checkpoint holds beside the weights and optimiser."""

    step: int
    tokens_seen: int
    since_fired: Tensor
    losses: list[Tensor]


class TrainSync(Protocol):
    """What ``train_sae`` asks of the processes it runs in, when it runs in several (and to resume):
    :class:`interventions.distributed.DDPSync` is the torch.distributed one. One process with no
    checkpoints needs none."""

    def start(self, sae: SAE, opt: torch.optim.Optimizer) -> TrainState | None:
        """Make every replica start from the same weights; return the state to resume from, if any."""
        ...

    def gradients(self, sae: SAE) -> None:
        """Replace each parameter's ``.grad`` by its mean over the processes."""
        ...

    def step_stats(self, fired: Tensor, tokens: int, loss: Tensor) -> tuple[Tensor, int, Tensor]:
        """The latents fired on any process, the tokens of all processes, the mean loss."""
        ...

    def residual_variance(self, err: Tensor) -> Tensor:
        """``err.var(dim=0).sum()`` over the union of the processes' batches (the AuxK loss scale)."""
        ...

    def step_done(self, state: TrainState, sae: SAE, opt: torch.optim.Optimizer) -> None:
        """Called after every step (a checkpoint every so many steps)."""
        ...


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 1024
    lr: float | None = None  # default: 2e-4 / sqrt(d_sae / 16384), sparsify's rule
    warmup_steps: int = 50
    decay_start: float = 0.8  # linear decay to 0 over the last 20% of steps
    seed: int = 0
    aux_coeff: float = 1 / 32
    aux_k: int | None = None  # default: d_in // 2
    dead_tokens: int = 100_000  # a latent silent for this many tokens is dead
    l1_coeff: float | None = None  # relu; default 1 / sqrt(d_in) (see the module docstring)
    l0_coeff: float = 1e-3  # jumprelu
    bandwidth: float = 1e-3  # jumprelu straight-through kernel width
    shuffle_tokens: int = 65_536
    eval_tokens: int | None = None  # default: 4096, or a tenth of a smaller source's first shuffle_tokens
    epochs: int | None = None  # passes over a finite source; None: cycle until ``steps``
    device: str | torch.device | None = None  # default: the tokens' device
    dtype: torch.dtype | None = None  # matmul precision; default bf16 autocast on CUDA, else float32
    progress: bool = True


@dataclass
class TrainReport:
    fvu: float
    l0: float
    dead_fraction: float
    tokens_seen: int
    steps: int
    losses: list[float] = field(default_factory=list)
    device: str = "cpu"
    dtype: str = "float32"
    settings: dict[str, float] = field(default_factory=dict)  # the resolved lr, l1_coeff, aux_k, eval_tokens

    def __str__(self) -> str:
        return (
            f"FVU {self.fvu:.4f}, L0 {self.l0:.1f}, dead {self.dead_fraction:.1%}, {self.tokens_seen} tokens, "
            f"{self.steps} steps on {self.device} ({self.dtype})"
        )


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


def _batches(
    chunks: Iterator[Tensor], cfg: TrainConfig, gen: torch.Generator, device: torch.device
) -> Iterator[Tensor]:
    """Shuffle tokens within a buffer of ``cfg.shuffle_tokens`` (where they are) and cut it into
    batches on ``device``; each batch is gathered on its own (permuting the whole buffer at once
    took a sixth of a CPU step)."""
    buffer: list[Tensor] = []
    size = 0

    def cut(tokens: Tensor, full: int) -> Iterator[Tensor]:
        order = torch.randperm(tokens.shape[0], generator=gen, device="cpu").to(tokens.device)
        for i in range(0, full, cfg.batch_size):
            yield tokens.index_select(0, order[i : i + cfg.batch_size]).to(device, torch.float32, non_blocking=True)
        buffer[:] = [tokens.index_select(0, order[full:])] if full < tokens.shape[0] else []

    for chunk in chunks:
        buffer.append(chunk)
        size += chunk.shape[0]
        if size >= cfg.shuffle_tokens:
            full = size // cfg.batch_size * cfg.batch_size
            yield from cut(buffer[0] if len(buffer) == 1 else torch.cat(buffer), full)
            size -= full
    if size:
        yield from cut(buffer[0] if len(buffer) == 1 else torch.cat(buffer), size)


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
    d_sae: int | SAE,
    kind: Kind = "topk",
    k: int = 32,
    *,
    layout: str | None = None,
    site: str | None = None,
    branch: str | None | bool = False,
    config: TrainConfig | None = None,
    info: SAEInfo | None = None,
    held_out: Tensor | None = None,
    sync: TrainSync | None = None,
) -> tuple[SAE, TrainReport]:
    """Train an SAE of ``d_sae`` latents on tokens from ``source``; returns it and its report.

    ``d_sae`` may be an :class:`SAE` instead: it is trained further (its kind, ``k`` and ``b_dec``
    kept; ``kind`` and ``k`` ignored), moved to the training device. ``held_out``: tokens kept
    apart from ``source`` to initialise ``b_dec`` and report on, instead of a random hold-out of
    the stream's start (every process of a distributed run holds the same ones). ``sync``: keeps
    the replicas of a multi-process run in step and checkpoints (:class:`TrainSync`)."""
    cfg = config or TrainConfig()
    gen = torch.Generator().manual_seed(cfg.seed)  # a CPU generator: draws are the same on every device

    def one_pass() -> Iterator[Tensor]:  # in pieces of shuffle_tokens: a big tensor is never copied whole
        for tokens in iter_tokens(source, layout=layout, site=site, branch=branch):
            yield from tokens.split(cfg.shuffle_tokens)

    first = one_pass()
    if held_out is not None:
        eval_x = to_tokens(held_out, layout)
        head, straddling, held = eval_x, None, None
        if eval_x.shape[0] < 1:
            raise ValueError("held_out holds no tokens: pass at least one token to evaluate on")
        n_eval = eval_x.shape[0]
    else:
        head, straddling = _read_head(first, max(cfg.shuffle_tokens, cfg.eval_tokens or 0))
        n_head = head.shape[0]
        if n_head == 0:
            raise ValueError(f"no activations to train on (site={site!r}, branch={branch!r}): is the store empty?")
        n_eval = cfg.eval_tokens if cfg.eval_tokens is not None else min(4096, n_head // 10)
        if n_head < n_eval or n_eval < 1:
            raise ValueError(
                f"the source holds {n_head} tokens, fewer than the {n_eval} held out for evaluation: "
                "lower TrainConfig.eval_tokens or pass more activations"
            )
        held = torch.randperm(n_head, generator=gen, device="cpu")[:n_eval].sort().values
        kept = torch.ones(n_head, dtype=torch.bool, device="cpu")
        kept[held] = False
        eval_x = head[held.to(head.device)]

    def chunks() -> Iterator[Tensor]:
        if held is not None:
            yield head[kept.to(head.device)]
        if straddling is not None:
            yield straddling
        yield from first  # the rest of the first pass
        passes = 1
        while cfg.epochs is None or passes < cfg.epochs:
            yielded = False
            # the hold-out stays held out on every pass
            for chunk in _without(one_pass(), held) if held is not None else one_pass():
                yielded = True
                yield chunk
            if not yielded:
                return  # nothing beyond the hold-out: the step == 0 check below says so
            passes += 1

    device = torch.device(cfg.device) if cfg.device is not None else head.device
    dtype = cfg.dtype or (torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32)
    eval_x = eval_x.to(device, torch.float32)
    d_in = eval_x.shape[1]
    info = info or SAEInfo(site=site or "", layout=layout, branch="all" if branch is False else str(branch))
    if isinstance(d_sae, SAE):
        if d_sae.d_in != d_in:
            raise ValueError(f"the SAE reads {d_sae.d_in} features, the tokens have {d_in}")
        sae = d_sae.to(device, torch.float32).train()
        d_sae, kind = sae.d_sae, sae.kind
    else:
        sae = SAE(d_in, d_sae, kind, k, info=info, seed=cfg.seed, device=device)
        with torch.no_grad():
            sae.b_dec.copy_(geometric_median(eval_x))
            if kind == "jumprelu":
                sae.threshold.fill_(float(eval_x.std()) * 0.1)
    lr = cfg.lr if cfg.lr is not None else 2e-4 / math.sqrt(d_sae / 16384)
    settings = {
        "lr": lr,
        "l1_coeff": cfg.l1_coeff if cfg.l1_coeff is not None else 1 / math.sqrt(d_in),
        "aux_k": cfg.aux_k or max(d_in // 2, 1),
        "eval_tokens": n_eval,
        "dead_tokens": cfg.dead_tokens,
    }
    variance = eval_x.var(dim=0).sum().clamp_min(1e-12)
    # fused: one kernel for all four tensors (it needs each grad laid out as its parameter)
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999), fused=device.type in ("cpu", "cuda"))
    since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)
    losses: list[Tensor] = []
    tokens_seen = 0
    bar = tqdm(total=cfg.steps, desc=f"SAE {kind} d_sae={d_sae}", disable=not cfg.progress)
    precision = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    buffers = _Buffers()
    spread = sync.residual_variance if sync is not None else _spread
    step = skip = 0
    resumed = sync.start(sae, opt) if sync is not None else None
    if resumed is not None:  # the same stream replayed up to where the checkpoint left it
        step = skip = resumed.step
        since_fired, tokens_seen, losses = resumed.since_fired.to(device), resumed.tokens_seen, resumed.losses
        bar.update(step)
    for x in _batches(chunks(), cfg, gen, device):
        if skip:
            skip -= 1
            continue
        if step >= cfg.steps:
            break
        for group in opt.param_groups:
            group["lr"] = lr * _lr_factor(step, cfg)
        dead = since_fired > cfg.dead_tokens
        if kind == "topk":  # gradients by hand: autograd's embedding_bag backward was half the step
            loss, fired = _topk_step(sae, x, cfg, variance, dead, settings, buffers, dtype, spread)
        else:
            opt.zero_grad(set_to_none=True)
            with precision:
                loss, fired = _loss(sae, x, cfg, variance, dead, settings, spread)
            loss.backward()
        n = x.shape[0]
        if sync is not None:
            sync.gradients(sae)
            fired, n, loss = sync.step_stats(fired, n, loss.detach())
        _remove_parallel_grad(sae)
        opt.step()
        sae.normalize_decoder()
        if kind == "jumprelu":
            with torch.no_grad():
                sae.threshold.clamp_(min=1e-6)
        since_fired = torch.where(fired, 0, since_fired + n)
        tokens_seen += n
        losses.append(loss.detach())
        step += 1
        if sync is not None:
            sync.step_done(TrainState(step, tokens_seen, since_fired, losses), sae, opt)
        if cfg.progress and (step % 25 == 0 or step == cfg.steps):
            bar.set_postfix(loss=f"{float(loss):.4f}", dead=f"{float(dead.float().mean()):.1%}")
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
            losses=torch.stack(losses).float().cpu().tolist(),
            device=str(device),
            dtype=str(dtype).removeprefix("torch."),
            settings=settings,
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
    return (torch.cat(got) if got else torch.zeros(0, 0, device="cpu")), None


def _without(chunks: Iterator[Tensor], positions: Tensor) -> Iterator[Tensor]:
    """``chunks`` with the tokens at the sorted ``positions`` (counted from the first) left out."""
    last = int(positions[-1]) if positions.numel() else -1
    offset = 0
    for chunk in chunks:
        n = chunk.shape[0]
        if offset <= last:  # past the last position, the rest of the pass goes through untouched
            inside = positions[(positions >= offset) & (positions < offset + n)] - offset
            if inside.numel():
                keep = torch.ones(n, dtype=torch.bool, device=chunk.device)
                keep[inside.to(chunk.device)] = False
                chunk = chunk[keep]
        offset += n
        if chunk.shape[0]:
            yield chunk


def _topk(acts: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top ``k`` of non-negative ``acts`` per row, unsorted, exactly; the values are gathered from
    ``acts``, so gradients flow through them. Torch's CPU topk costs per row, so rows are made
    short: compared as int32 (the same order for non-negative floats, two thirds of the float
    time), the top ``k`` lie in the ``k`` groups of 4 with the largest maxima (a group holding one
    has a maximum above all but ``k - 1`` others), and only those ``4k`` candidates are ranked."""
    if acts.dtype != torch.float32:
        return acts.topk(k, sorted=False)
    n, m = acts.shape
    keys = acts.detach().view(torch.int32)
    if m % 4 or m < 8 * k:
        idx = keys.topk(k, sorted=False).indices
    else:
        groups = keys.view(n, m // 4, 4).amax(-1).topk(k, sorted=False).indices  # [n, k]
        members = (groups.unsqueeze(-1) * 4 + torch.arange(4, device=acts.device)).view(n, 4 * k)
        idx = members.gather(1, keys.gather(1, members).topk(k, sorted=False).indices)
    return acts.gather(1, idx), idx


def _auxk(
    acts: Tensor, dead: Tensor, aux_k: int, w_dec: Tensor, out: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, float] | None:
    """The AuxK reconstruction of the residual from the ``aux_k`` largest ReLU'd activations of
    dead latents: only dead latents compete and the loss is scaled down while fewer than ``aux_k``
    are dead (as in sparsify); the loss is divided by the residual's variance (as in Gao et al.;
    sparsify divides by the tokens', which revived fewer planted dead latents: 6% left, not 3%).
    Returns (values, indices, reconstruction, scale), or None when no latent is dead."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return None
    masked = torch.mul(acts, dead, out=out) if out is not None else acts * dead
    values, idx = _topk(masked, min(aux_k, n_dead))  # a live latent picked here has value 0
    values = values.float()
    e_hat = F.embedding_bag(idx, w_dec, per_sample_weights=values, mode="sum")
    return values, idx, e_hat, min(n_dead / aux_k, 1.0)


class _Buffers:
    """Step-sized scratch tensors kept across steps: fresh ones cost page faults on the CPU (a
    quarter of a step at d_sae 256). A ``zeros`` buffer is all zero when handed out; its user
    zeroes again what it wrote (k entries a row, not the whole buffer)."""

    def __init__(self) -> None:
        self._tensors: dict[str, Tensor] = {}

    def get(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, zeros: bool = False
    ) -> Tensor:
        t = self._tensors.get(name)
        if t is None or t.shape != shape or t.dtype != dtype or t.device != device:
            make = torch.zeros if zeros else torch.empty
            t = self._tensors[name] = make(shape, dtype=dtype, device=device)
        return t


def _topk_step(
    sae: SAE,
    x: Tensor,
    cfg: TrainConfig,
    variance: Tensor,
    dead: Tensor,
    settings: dict[str, float],
    buffers: _Buffers,
    dtype: torch.dtype = torch.float32,
    spread: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """One TopK step with its gradients written by hand into ``.grad``; returns (loss, fired).

    The same loss as :func:`_loss` (checked against autograd in the tests): ``|x_hat - x|^2 /
    variance`` plus AuxK, whose gradient, as in Gao et al., reaches the dead latents' encoder
    (sparsify's fused encoder drops it: there AuxK moves only decoder rows and revives few).
    By hand because autograd's ``embedding_bag`` backward took half of a CPU step. The four
    products of a batch with a weight run in ``dtype``; everything else in float32.
    """
    n, shape, device, f32 = x.shape[0], (x.shape[0], sae.d_sae), x.device, torch.float32
    w_dec = sae.W_dec

    def mm(a: Tensor, b: Tensor, name: str) -> Tensor:
        out = buffers.get(name, (a.shape[0], b.shape[1]), dtype, device)
        return torch.mm(a.to(dtype), b.to(dtype), out=out)

    with torch.no_grad():
        xc = torch.sub(x, sae.b_dec, out=buffers.get("xc", x.shape, f32, device))
        acts = mm(xc, sae.W_enc, "acts").add_(sae.b_enc).clamp_(min=0)
        values, idx = _topk(acts, sae.k)
        values = values.float()
        err = F.embedding_bag(idx, w_dec, per_sample_weights=values, mode="sum").add_(sae.b_dec).sub_(x)
        norm = n * variance
        loss = err.flatten().dot(err.flatten()) / norm
        g_err = torch.mul(err, 2 / norm, out=buffers.get("g_err", x.shape, f32, device))
        z = buffers.get("z", shape, f32, device, zeros=True).scatter_(1, idx, values)
        g_w_dec = mm(z.t(), g_err, "g_w_dec").float()
        g_pre = buffers.get("g_pre", shape, f32, device, zeros=True)
        g_pre.scatter_(1, idx, mm(g_err, w_dec.t(), "dense").gather(1, idx).float() * (values > 0))
        aux = _auxk(acts, dead, int(settings["aux_k"]), w_dec, buffers.get("masked", shape, acts.dtype, device))
        if aux is not None:
            a_values, a_idx, e_hat, scale = aux
            diff = e_hat + err  # e_hat - (x - x_hat)
            # the residual's variance, as Gao et al. (of all processes' batches: ``spread``)
            aux_norm = n * (spread or _spread)(err).clamp_min(1e-12)
            loss = loss + cfg.aux_coeff * scale * diff.pow(2).sum() / aux_norm
            g_diff = diff * (2 * cfg.aux_coeff * scale / aux_norm)
            z_aux = buffers.get("z_aux", shape, f32, device, zeros=True).scatter_(1, a_idx, a_values)
            g_w_dec += mm(z_aux.t(), g_diff, "g_w_dec_aux").float()
            g_pre.scatter_add_(1, a_idx, mm(g_diff, w_dec.t(), "dense").gather(1, a_idx).float() * (a_values > 0))
            z_aux.scatter_(1, a_idx, 0.0)
        g_b_enc = g_pre.sum(0)
        if sae.W_enc.t().is_contiguous():  # W_enc = W_dec.T at initialisation: its grad laid out alike
            sae.W_enc.grad = mm(g_pre.t(), xc, "g_w_enc").float().t()
        else:
            sae.W_enc.grad = mm(xc.t(), g_pre, "g_w_enc").float()
        sae.b_enc.grad = g_b_enc
        sae.W_dec.grad = g_w_dec
        sae.b_dec.grad = g_err.sum(0) - sae.W_enc @ g_b_enc
        fired = z.amax(0) > 0
        z.scatter_(1, idx, 0.0)
        g_pre.scatter_(1, idx, 0.0)
        if aux is not None:
            g_pre.scatter_(1, aux[1], 0.0)
    return loss, fired


def _loss(
    sae: SAE,
    x: Tensor,
    cfg: TrainConfig,
    variance: Tensor,
    dead: Tensor,
    settings: dict[str, float],
    spread: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """The loss by autograd (every kind; TopK trains through :func:`_topk_step`) and the fired latents."""
    pre = sae.pre_acts(x)
    if sae.kind == "topk":
        top = pre.topk(sae.k, dim=-1, sorted=False)
        values = torch.relu(top.values).float()
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
        x_hat = sae.decode(z.float())
        fired = (z != 0).any(dim=0)
    err = x_hat - x
    norm = x.shape[0] * variance
    loss = err.pow(2).sum() / norm
    if sae.kind == "relu":
        loss = loss + settings["l1_coeff"] * (z * sae.W_dec.norm(dim=-1)).sum(-1).mean() / variance.sqrt()
    elif sae.kind == "jumprelu":
        loss = loss + cfg.l0_coeff * _Step.apply(pre, sae.threshold, cfg.bandwidth).sum(-1).mean()
    else:
        aux = _auxk(torch.relu(pre), dead, int(settings["aux_k"]), sae.W_dec)
        if aux is not None:
            e_hat, scale = aux[2], aux[3]
            aux_norm = x.shape[0] * (spread or _spread)(err.detach()).clamp_min(1e-12)
            loss = loss + cfg.aux_coeff * scale * (e_hat + err.detach()).pow(2).sum() / aux_norm
    return loss, fired


def _spread(err: Tensor) -> Tensor:
    """The summed per-feature variance of a batch of residuals (the AuxK loss's scale)."""
    return err.var(dim=0).sum()


def _remove_parallel_grad(sae: SAE) -> None:
    """Project out the part of the decoder gradient that would only change row norms."""
    g = sae.W_dec.grad
    if g is not None:
        w = sae.W_dec.data
        g.sub_((g * w).sum(-1, keepdim=True) * w)
