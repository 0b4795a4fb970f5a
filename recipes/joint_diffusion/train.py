"""Training the joint diffusion classifier: supervised only, joint (denoising + cross-entropy), or
joint with FixMatch on unlabelled images (Mediffusion's semi-supervised recipe).

FixMatch (Sohn et al. 2020, as Mediffusion uses it): the model's prediction on a *weak*
augmentation of an unlabelled image becomes its pseudo-label when the softmax confidence exceeds
``threshold``; the cross-entropy of that pseudo-label is then applied to a *strong* augmentation
of the same image. Augmentations here are label-preserving for the shapes world's shape and colour
classes: weak = horizontal flip + a shift of up to 2 px; strong = weak + brightness scaling,
Gaussian noise and a 5 x 5 cutout.

>>> import torch
>>> from recipes.joint_diffusion.model import JointDiffusion
>>> torch.manual_seed(0)
<torch._C.Generator object at ...>
>>> model = JointDiffusion(widths=(8, 16), hidden=16)
>>> x, y = torch.rand(8, 3, 16, 16) * 2 - 1, torch.tensor([0, 1] * 4)
>>> history = train_joint(model, x, y, unlabelled=x, mode="fixmatch", config=TrainConfig(steps=2, batch_size=4))
>>> sorted(history[-1])
['ce', 'diffusion', 'fixmatch', 'mask_rate', 'step']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from .model import JointDiffusion

__all__ = ["MODES", "Augment", "TrainConfig", "weak_augment", "strong_augment", "train_joint", "accuracy"]

#: supervised: cross-entropy on the labelled images only; joint: + denoising loss on every image;
#: fixmatch: joint + FixMatch on the unlabelled images.
MODES = ("supervised", "joint", "fixmatch")


@dataclass
class TrainConfig:
    """``batch_size`` labelled images and ``unlabelled_ratio * batch_size`` unlabelled ones per step."""

    steps: int = 400
    batch_size: int = 32
    unlabelled_ratio: int = 2
    lr: float = 2e-3
    diffusion_weight: float = 1.0
    fixmatch_weight: float = 1.0
    threshold: float = 0.95
    seed: int = 0
    #: Weight of the cross-entropy on the model's own denoised estimates ``x0_hat(x_t)`` (0: off)
    #: of the labelled images (and, with FixMatch, the confidently pseudo-labelled unlabelled ones)
    #: at ``t ~ U[1, denoised_t_max]``: the input classifier guidance feeds the classifier.
    denoised_ce_weight: float = 0.0
    denoised_t_max: int = 500
    #: ``True``: ``x0_hat`` is detached, only the classifier (encoder + head) learns from this term.
    denoised_detach: bool = True


def weak_augment(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Random horizontal flip and a shift of up to 2 px (the background, -1, fills in)."""
    b = x.shape[0]
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)
    pad = 2
    padded = F.pad(x, (pad, pad, pad, pad), value=-1.0)
    dx = torch.randint(2 * pad + 1, (b,), generator=generator).tolist()
    dy = torch.randint(2 * pad + 1, (b,), generator=generator).tolist()
    h, w = x.shape[-2:]
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


def strong_augment(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """:func:`weak_augment`, then brightness x U(0.5, 1), Gaussian noise (std 0.15) and a 5 x 5 cutout."""
    x = weak_augment(x, generator)
    b, _, h, w = x.shape
    gain = (0.5 + 0.5 * torch.rand(b, 1, 1, 1, generator=generator)).to(x.device)
    x = (x + 1) * gain - 1 + 0.15 * torch.randn(x.shape, generator=generator).to(x.device)
    cy = torch.randint(h - 4, (b,), generator=generator)
    cx = torch.randint(w - 4, (b,), generator=generator)
    ys, xs = torch.arange(h), torch.arange(w)
    rows = (ys[None, :] >= cy[:, None]) & (ys[None, :] < cy[:, None] + 5)
    cols = (xs[None, :] >= cx[:, None]) & (xs[None, :] < cx[:, None] + 5)
    box = rows[:, :, None] & cols[:, None, :]
    return torch.where(box[:, None].to(x.device), torch.full_like(x, -1.0), x).clamp(-1.5, 1.5)


def _denoising(model: JointDiffusion, xl: Tensor, yl: Tensor, xu: Tensor, g: torch.Generator) -> Tensor:
    """The denoising loss on labelled and unlabelled images together; a class-conditional model
    sees the labelled ones with their class and the unlabelled ones with "no class" (the
    unconditional half classifier-free guidance needs)."""
    if not getattr(model, "class_conditional", False):
        return model.denoising_loss(torch.cat([xl, xu]), g)
    labels = torch.cat([yl, torch.full((xu.shape[0],), -1, dtype=torch.long, device=yl.device)])
    return model.denoising_loss(torch.cat([xl, xu]), g, labels)


def _denoised_ce(
    model: JointDiffusion, x: Tensor, y: Tensor, weight: Tensor, cfg: TrainConfig, g: torch.Generator
) -> Tensor:
    """Weighted cross-entropy of ``classify(x0_hat(x_t))`` for ``x_t`` noised from ``x`` at a
    random ``t <= denoised_t_max``. Classifier guidance differentiates the classifier at exactly
    these inputs; a classifier trained on clean images only is off its data there, and its
    gradient flips its own decision with pixel changes no other observer reads as the class."""
    t = torch.randint(1, cfg.denoised_t_max + 1, (x.shape[0],), generator=g).to(x.device)
    x_t = model.add_noise(x, torch.randn(x.shape, generator=g).to(x.device), t)
    x0_hat = model.x0_estimate(x_t, t)
    if cfg.denoised_detach:
        x0_hat = x0_hat.detach()
    return (F.cross_entropy(model.classify(x0_hat), y, reduction="none") * weight).mean()


#: An augmentation: a batch and a generator in, a batch of the same shape out.
Augment = Callable[[Tensor, "torch.Generator | None"], Tensor]


def _check(x: Tensor, name: str, images: bool) -> None:
    if images and x.ndim != 4:
        raise ValueError(f"{name} must be B x C x H x W images, got shape {tuple(x.shape)}")
    if x.ndim < 2:
        raise ValueError(f"{name} must be a batch (B x ...), got shape {tuple(x.shape)}")


def train_joint(
    model: JointDiffusion,
    labelled: Tensor,
    labels: Tensor,
    unlabelled: Tensor | None = None,
    mode: str = "fixmatch",
    config: TrainConfig | None = None,
    progress: bool = False,
    augment: Augment | None = weak_augment,
) -> list[dict[str, float]]:
    """Train ``model`` in place; returns the per-step losses (every 10th step and the last).

    ``labelled``/``labels``: the labelled images and their classes; ``unlabelled``: more images
    without labels (needed for ``joint`` and ``fixmatch``; the labelled ones are denoised too).
    ``augment``: applied to the labelled batch (``None``: none, for data that are not images, such
    as the Gaussian-mixture world with :class:`recipes.jdcl.mlp.JointMLP`; ``fixmatch`` needs images).
    """
    from tqdm.auto import tqdm

    cfg = config or TrainConfig()
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: use one of {MODES}")
    if mode == "fixmatch" and augment is None:
        raise ValueError("mode 'fixmatch' needs image augmentations: pass augment=weak_augment")
    images = mode == "fixmatch" or augment is not None
    _check(labelled, "labelled", images)
    if labels.shape != (labelled.shape[0],):
        raise ValueError(f"labels must have one class per labelled image: {tuple(labels.shape)} vs {labelled.shape[0]}")
    if mode != "supervised":
        if unlabelled is None:
            raise ValueError(f"mode {mode!r} needs unlabelled images (or use mode='supervised')")
        _check(unlabelled, "unlabelled", images)
    if cfg.denoised_ce_weight and not 1 <= cfg.denoised_t_max < model.train_timesteps:
        raise ValueError(f"denoised_t_max must lie in [1, {model.train_timesteps}), got {cfg.denoised_t_max}")
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    model.train()
    history: list[dict[str, float]] = []
    nb = min(cfg.batch_size, labelled.shape[0])
    for step in tqdm(range(cfg.steps), desc=mode, disable=not progress, mininterval=5):
        idx = torch.randint(labelled.shape[0], (nb,), generator=g)
        xl, yl = labelled[idx], labels[idx]
        if augment is not None:
            xl = augment(xl, g)
        record = {"step": float(step)}
        if mode == "fixmatch":
            assert unlabelled is not None
            xu = unlabelled[torch.randint(unlabelled.shape[0], (nb * cfg.unlabelled_ratio,), generator=g)]
            with torch.no_grad():
                probs = model.classify(weak_augment(xu, g)).softmax(-1)
            confidence, pseudo = probs.max(-1)
            mask = (confidence >= cfg.threshold).float()
            logits = model.classify(torch.cat([xl, strong_augment(xu, g)]))
            ce = F.cross_entropy(logits[:nb], yl)
            fixmatch = (F.cross_entropy(logits[nb:], pseudo, reduction="none") * mask).mean()
            diffusion = _denoising(model, labelled[idx], yl, xu, g)
            loss = ce + cfg.fixmatch_weight * fixmatch + cfg.diffusion_weight * diffusion
            record.update(fixmatch=fixmatch.item(), mask_rate=mask.mean().item(), diffusion=diffusion.item())
            if cfg.denoised_ce_weight:
                denoised = _denoised_ce(
                    model, torch.cat([xl, xu]), torch.cat([yl, pseudo]), torch.cat([mask.new_ones(nb), mask]), cfg, g
                )
                loss = loss + cfg.denoised_ce_weight * denoised
                record["denoised_ce"] = denoised.item()
        else:
            ce = F.cross_entropy(model.classify(xl), yl)
            loss = ce
            if mode == "joint":
                assert unlabelled is not None
                xu = unlabelled[torch.randint(unlabelled.shape[0], (nb * cfg.unlabelled_ratio,), generator=g)]
                diffusion = _denoising(model, labelled[idx], yl, xu, g)
                loss = ce + cfg.diffusion_weight * diffusion
                record["diffusion"] = diffusion.item()
                if cfg.denoised_ce_weight:
                    denoised = _denoised_ce(model, xl, yl, xl.new_ones(nb), cfg, g)
                    loss = loss + cfg.denoised_ce_weight * denoised
                    record["denoised_ce"] = denoised.item()
        record["ce"] = ce.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 10 == 0 or step == cfg.steps - 1:
            history.append(record)
    model.eval()
    return history


@torch.no_grad()
def accuracy(model: JointDiffusion, images: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    """Fraction of ``images`` that ``model`` classifies as ``labels`` (eval mode, no dropout)."""
    was = model.training
    model.eval()
    hits = 0
    for i in range(0, images.shape[0], batch_size):
        hits += int((model.classify(images[i : i + batch_size]).argmax(-1) == labels[i : i + batch_size]).sum())
    model.train(was)
    return hits / max(1, images.shape[0])
