"""Sparse autoencoders on site activations: TopK, BatchTopK, ReLU (+L1) and JumpReLU.

Parameters follow SAELens' names and conventions (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``,
``b_enc``, ``b_dec``, ``threshold``; the input is centred by ``b_dec`` before encoding unless
``apply_b_dec_to_input=False``, as in Gemma Scope), so an SAE saved here loads in SAELens unchanged. Each SAE records what it was made for (:class:`SAEInfo`):
the site, its layout, the step/branch window and the base model; :meth:`SAE.attach` refuses a
model where that site does not exist or has another width.

BatchTopK keeps the ``k * batch`` largest activations of a whole batch during training and falls
back to per-token top-k at inference, as in SAeUron and TADA.

>>> sae = SAE(d_in=8, d_sae=32, kind="topk", k=4)
>>> z = sae.encode(torch.randn(5, 8))
>>> int((z != 0).sum(dim=-1).max())
4
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn

from . import sae_format
from .context import Context, When
from .hooks import SAEEdit, WidthCheck
from .sae_format import SAELENS_ARCH

Kind = Literal["topk", "batchtopk", "relu", "jumprelu"]


@dataclass
class SAEInfo:
    """What an SAE was made for; stored in its cfg.json ``metadata`` (``metrics``: the held-out
    numbers of its training report, shown on its card; ``extra``: any other metadata, kept as is)."""

    site: str = ""
    layout: str | None = None
    base_model: str = ""
    steps: list[int] | None = None
    branch: str = "all"
    method: str = ""
    dataset: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class SAE(nn.Module):
    """A sparse autoencoder ``x -> z = act((x - b_dec) W_enc + b_enc) -> z W_dec + b_dec``."""

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        kind: Kind = "topk",
        k: int = 32,
        *,
        info: SAEInfo | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        apply_b_dec_to_input: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if kind not in SAELENS_ARCH:
            raise ValueError(f"kind must be one of {sorted(SAELENS_ARCH)}, got {kind!r}")
        if kind in ("topk", "batchtopk") and not 0 < k <= d_sae:
            raise ValueError(f"k must be in [1, d_sae={d_sae}], got {k}")
        self.d_in, self.d_sae, self.kind, self.k = d_in, d_sae, kind, k
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.info = info or SAEInfo()
        # drawn on the CPU for the same weights on every device; then built on ``device`` (torch's default if None)
        device = torch.device(device) if device is not None else torch.get_default_device()
        gen = torch.Generator().manual_seed(seed)
        w_dec = torch.randn(d_sae, d_in, generator=gen, dtype=torch.float32, device="cpu")
        w_dec = (w_dec / w_dec.norm(dim=-1, keepdim=True)).to(device, dtype)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.t().clone())
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=dtype, device=device))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype, device=device))
        self.threshold = nn.Parameter(
            torch.full((d_sae,), 1e-3, dtype=dtype, device=device), requires_grad=kind == "jumprelu"
        )

    # -- forward pieces --------------------------------------------------------------------------
    def pre_acts(self, x: Float[Tensor, "n d_in"]) -> Float[Tensor, "n d_sae"]:
        return ((x - self.b_dec) if self.apply_b_dec_to_input else x) @ self.W_enc + self.b_enc

    def activate(self, pre: Float[Tensor, "n d_sae"], *, batch_topk: bool = False) -> Float[Tensor, "n d_sae"]:
        """Pre-activations to latents; ``batch_topk`` uses the whole batch's top ``k * n``."""
        if self.kind == "relu":
            return torch.relu(pre)
        if self.kind == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold)  # SAELens' formula
        if self.kind == "batchtopk" and batch_topk:
            flat = torch.relu(pre).flatten()
            top = flat.topk(min(self.k * pre.shape[0], flat.numel()))
            return torch.zeros_like(flat).scatter(0, top.indices, top.values).view_as(pre)
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    def encode(self, x: Float[Tensor, "n d_in"]) -> Float[Tensor, "n d_sae"]:
        return self.activate(self.pre_acts(x))

    def decode(self, z: Float[Tensor, "n d_sae"]) -> Float[Tensor, "n d_in"]:
        return z @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "n d_in"]) -> Float[Tensor, "n d_in"]:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Keep every decoder row at unit norm (the scale lives in the latents)."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))

    # -- use on a model --------------------------------------------------------------------------
    def edit(
        self,
        edit: Callable[[Tensor, Context], Tensor] | None = None,
        *,
        stage: Literal["post", "pre"] = "post",
        tokens: Sequence[int] | Tensor | None = None,
        when: When | None = None,
    ) -> SAEEdit:
        """A hook that edits this SAE's latents at its site (``stage="pre"``: before top-k)."""
        return SAEEdit(self, edit, stage=stage, tokens=tokens, when=when)

    def attach(self, model: Any, edit: Callable[[Tensor, Context], Tensor] | None = None, **kw: Any) -> Any:
        """Attach an edit at the site this SAE was trained on; refuses a missing site or width."""
        from .session import attach

        site = self.info.site
        if not site:
            raise ValueError("this SAE records no site (info.site); use attach(model, {site: sae.edit(...)})")
        when = kw.pop("when", None)
        hook = self.edit(edit, stage=kw.pop("stage", "post"), tokens=kw.pop("tokens", None), when=when)
        checked: list[Any] = [WidthCheck(self.d_in, f"SAE for {site!r}"), hook]
        return attach(model, {site: checked}, layouts=_layout(self.info, site), **kw)

    def extra_repr(self) -> str:
        k = f", k={self.k}" if self.kind in ("topk", "batchtopk") else ""
        return f"d_in={self.d_in}, d_sae={self.d_sae}, kind={self.kind}{k}, site={self.info.site!r}"

    def save(self, folder: str | os.PathLike[str], *, report: Any = None) -> None:
        """Write this SAE in the SAELens >= 6 layout (:mod:`interventions.sae_format`); refused with
        nothing written when it would not load back (non-finite weights, a branch outside the vocabulary).

        ``report``: the :class:`~interventions.sae_train.TrainReport` of ``train_sae``; its held-out
        FVU, L0, dead fraction and token count go to ``info.metrics`` (and so to the Hub card), how
        it was trained (steps, device, dtype, the resolved settings) to ``info.extra["training"]``.
        """
        if report is not None:
            self.info.metrics = {
                **self.info.metrics,
                **{k: float(getattr(report, k)) for k in ("fvu", "l0", "dead_fraction")},
                "tokens_seen": int(report.tokens_seen),
            }
            training = {"steps": int(report.steps), "device": str(report.device), "dtype": str(report.dtype)}
            self.info.extra = {**self.info.extra, "training": {**training, **getattr(report, "settings", {})}}
            self.info.method = self.info.method or f"{self.kind} SAE (interventions.sae_train)"
        sae_format.save(self, folder)

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> SAE:
        """An SAE from a folder in the SAELens >= 6 layout (ours or SAELens'); refused
        (``hub_cards.ArtifactError``) when its settings or tensors would make it compute something else."""
        spec = sae_format.read(folder)
        info = SAEInfo(**spec.info)
        sae = cls(
            spec.d_in,
            spec.d_sae,
            spec.kind,  # type: ignore[arg-type]
            spec.k or 1,
            info=info,
            dtype=spec.dtype,
            apply_b_dec_to_input=spec.apply_b_dec_to_input,
        )
        with torch.no_grad():
            for name, t in spec.tensors.items():
                getattr(sae, name).copy_(t)
        return sae.eval()


def _layout(info: SAEInfo, site: str) -> dict[str, str] | None:
    return {site: info.layout} if info.layout else None


# -- edits ---------------------------------------------------------------------------------------
def _ids(features: Iterable[int] | Tensor) -> Tensor:
    return torch.as_tensor(list(features) if not isinstance(features, Tensor) else features, dtype=torch.long)


def zero(features: Iterable[int] | Tensor) -> Callable[[Tensor, Context], Tensor]:
    """Edit: set the given latents to 0."""
    return scale(features, 0.0)


def scale(features: Iterable[int] | Tensor, factor: float) -> Callable[[Tensor, Context], Tensor]:
    """Edit: multiply the given latents by ``factor`` (negative values push against a concept)."""
    ids = _ids(features)

    def fn(z: Tensor, ctx: Context) -> Tensor:
        z = z.clone()
        z[:, ids] = z[:, ids] * factor
        return z

    return fn


def clamp(features: Iterable[int] | Tensor, value: float) -> Callable[[Tensor, Context], Tensor]:
    """Edit: set the given latents to ``value`` on every token."""
    ids = _ids(features)

    def fn(z: Tensor, ctx: Context) -> Tensor:
        z = z.clone()
        z[:, ids] = value
        return z

    return fn


def add(features: Iterable[int] | Tensor, value: float) -> Callable[[Tensor, Context], Tensor]:
    """Edit: add ``value`` to the given latents on every token."""
    ids = _ids(features)

    def fn(z: Tensor, ctx: Context) -> Tensor:
        z = z.clone()
        z[:, ids] = z[:, ids] + value
        return z

    return fn


# -- metrics -------------------------------------------------------------------------------------
def fvu(x: Tensor, x_hat: Tensor) -> float:
    """Fraction of variance unexplained: sum |x - x_hat|^2 / sum |x - mean(x)|^2."""
    num = (x - x_hat).pow(2).sum()
    den = (x - x.mean(dim=0, keepdim=True)).pow(2).sum().clamp_min(1e-12)
    return float(num / den)


def l0(z: Tensor) -> float:
    """Mean number of active latents per token."""
    return float((z != 0).sum(dim=-1).float().mean())


def info_dict(info: SAEInfo) -> dict[str, Any]:
    return asdict(info)


def geometric_median(x: Tensor, iters: int = 30) -> Tensor:
    """Weiszfeld's geometric median: a robust b_dec initialisation (outlier tokens barely move it)."""
    m = x.mean(dim=0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=-1).clamp_min(1e-8)
        m = (w[:, None] * x).sum(dim=0) / w.sum()
    return m


def expected_dead_window(d_sae: int, k: int) -> int:
    """Tokens after which a never-firing latent counts as dead (~10x its fair share)."""
    return int(10 * math.ceil(d_sae / max(k, 1)))
