"""One personalization task: DreamBooth's denoising loss on the subject's renders, LoRA only.

Everything but the attached LoRA factors is frozen; the identifier prompt is encoded once by the
frozen text encoder. Batches, noise and timesteps come from one seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

__all__ = ["Training", "encode", "train_task"]


@dataclass(frozen=True)
class Training:
    """Per-task settings: steps, batch, AdamW learning rate, instance renders, LoRA rank."""

    steps: int = 60
    batch: int = 8
    lr: float = 4e-3
    instances: int = 16
    rank: int = 4

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "instances", "rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"Training.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"Training.lr must be > 0, got {self.lr}")


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
) -> list[float]:
    """Train ``params`` (the LoRA factors in ``unet``) for ``cfg.steps``; returns the loss curve."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    unet.train()
    losses = []
    n_timesteps = scheduler.config.num_train_timesteps
    cond = embedding.expand(cfg.batch, -1, -1)
    for _ in tqdm(range(cfg.steps), desc=desc, disable=not progress, mininterval=5, leave=False):
        x0 = images[torch.randint(len(images), (cfg.batch,), generator=g)]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(n_timesteps, (cfg.batch,), generator=g)
        pred = unet(scheduler.add_noise(x0, noise, t), t, cond).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    unet.eval()
    return losses
