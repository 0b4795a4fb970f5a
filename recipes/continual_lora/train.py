"""One personalization task: DreamBooth's denoising loss on the subject's renders, LoRA only.

Everything but the attached LoRA factors is frozen; the identifier prompt is encoded once by the
frozen text encoder. Batches, noise and timesteps come from one seeded generator. With prior
preservation (``Training.prior_weight > 0``) each step also denoises as many class images (made by
the frozen base model for the class prompt) and adds their loss times ``prior_weight``, as
diffusers' ``train_dreambooth_lora.py --with_prior_preservation`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from .adapters import TARGET_SETS

__all__ = ["PRIOR_PROMPTS", "Training", "encode", "train_task"]

#: whose images the prior preservation keeps: the task's class prompt (DreamBooth) or the empty prompt
PRIOR_PROMPTS = ("class", "null")


@dataclass(frozen=True)
class Training:
    """Per-task settings: steps, batch, AdamW learning rate, instance renders, LoRA rank, DreamBooth
    prior preservation (the class loss weight, 0 = off, how many class images, and whose: the
    task's class prompt, ``"class"``, or the empty prompt, ``"null"``, which every prompt's encoding
    shares ~99 % of), and which projections the LoRA adapts (a key of :data:`~.adapters.TARGET_SETS`)."""

    steps: int = 60
    batch: int = 8
    lr: float = 4e-3
    instances: int = 16
    rank: int = 4
    prior_weight: float = 0.0
    class_images: int = 32
    targets: str = "attention"
    prior_prompt: str = "class"

    def __post_init__(self) -> None:
        if self.prior_prompt not in PRIOR_PROMPTS:
            raise ValueError(f"Training.prior_prompt must be one of {PRIOR_PROMPTS}, got {self.prior_prompt!r}")
        if self.targets not in TARGET_SETS:
            raise ValueError(f"Training.targets must be one of {sorted(TARGET_SETS)}, got {self.targets!r}")
        for name in ("steps", "batch", "instances", "rank", "class_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"Training.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"Training.lr must be > 0, got {self.lr}")
        if not self.prior_weight >= 0:
            raise ValueError(
                f"Training.prior_weight must be >= 0 (0 turns prior preservation off), got {self.prior_weight}"
            )


def encode(pipe, prompt: str) -> torch.Tensor:
    """The pipeline's text embedding of ``prompt`` (``1 x tokens x dim``), no gradient."""
    with torch.no_grad():
        return pipe.encode_prompt(prompt, "cpu", 1, False)[0]


def train_task(
    unet,
    params: list[torch.nn.Parameter],
    embedding: torch.Tensor,
    images: torch.Tensor,
    scheduler,
    cfg: Training,
    seed: int,
    desc: str = "task",
    progress: bool = True,
    prior: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[float]:
    """Train ``params`` (the LoRA factors in ``unet``) for ``cfg.steps``; returns the loss curve
    (instance loss plus ``cfg.prior_weight`` times the class loss). ``prior`` is the class prompt's
    embedding and the class images, needed when ``cfg.prior_weight > 0``."""
    if cfg.prior_weight > 0 and prior is None:
        raise ValueError("Training.prior_weight > 0 needs prior=(class embedding, class images)")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    unet.train()
    losses = []
    n_timesteps = scheduler.config.num_train_timesteps
    cond = embedding.expand(cfg.batch, -1, -1)
    class_cond = prior[0].expand(cfg.batch, -1, -1) if prior is not None else None
    for _ in tqdm(range(cfg.steps), desc=desc, disable=not progress, mininterval=5, leave=False):
        x0 = images[torch.randint(len(images), (cfg.batch,), generator=g)]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(n_timesteps, (cfg.batch,), generator=g)
        if cfg.prior_weight > 0:  # instance and class examples in one batch, as diffusers' DreamBooth
            x0 = torch.cat([x0, prior[1][torch.randint(len(prior[1]), (cfg.batch,), generator=g)]])
            noise = torch.cat([noise, torch.randn(noise.shape, generator=g)])
            t = torch.cat([t, torch.randint(n_timesteps, (cfg.batch,), generator=g)])
            pred = unet(scheduler.add_noise(x0, noise, t), t, torch.cat([cond, class_cond])).sample
            loss = F.mse_loss(pred[: cfg.batch], noise[: cfg.batch])
            loss = loss + cfg.prior_weight * F.mse_loss(pred[cfg.batch :], noise[cfg.batch :])
        else:
            pred = unet(scheduler.add_noise(x0, noise, t), t, cond).sample
            loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    unet.eval()
    return losses
