"""Evaluator CNNs for the shapes world: one small classifier per factor (shape, colour, style).

Trained on ground-truth renders from :mod:`recipes.worlds.shapes` with mild Gaussian input noise
(so that slightly imperfect generated samples are judged by what they show, not by pixel-exact
values). Inputs are images in ``[-1, 1]``, ``B x 3 x 16 x 16`` (a ``StableDiffusionPipeline`` with
``output_type="pt"`` returns ``[0, 1]``: use ``images * 2 - 1``).

Saved as ``evaluators/{config.json, shape.safetensors, colour.safetensors, style.safetensors}``.
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from . import shapes as world

__all__ = [
    "Evaluator",
    "train_evaluators",
    "evaluate",
    "save_evaluators",
    "load_evaluators",
    "predict",
    "score",
]


class Evaluator(nn.Module):
    """Conv(16) - Conv(16) - pool - Conv(32) - pool - MLP(64) -> logits over one factor."""

    def __init__(self, num_classes: int = 4, width: int = 16, hidden: int = 64):
        super().__init__()
        self.config = {"num_classes": num_classes, "width": width, "hidden": hidden}
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * (world.SIZE // 4) ** 2, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def predict(evaluators: dict[str, Evaluator], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Predicted class index per factor for images in [-1, 1]."""
    with torch.no_grad():
        return {f: m(images.float()).argmax(-1) for f, m in evaluators.items()}


def score(evaluators: dict[str, Evaluator], images: torch.Tensor, labels: dict[str, torch.Tensor]) -> dict[str, float]:
    """Accuracy per factor and ``all`` (every factor right) of images against labels."""
    pred = predict(evaluators, images)
    ok = {f: pred[f] == labels[f] for f in evaluators}
    out = {f: v.float().mean().item() for f, v in ok.items()}
    out["all"] = torch.stack(list(ok.values())).all(0).float().mean().item()
    return out


def train_evaluators(
    steps: int = 1000,
    batch_size: int = 64,
    lr: float = 3e-3,
    noise: float = 0.15,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, Evaluator]:
    """Train the three evaluators jointly on fresh ground-truth batches (noise std ~ U(0, noise)),
    drawn on the CPU (the same on every device) and trained on ``device``; returned on the CPU."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    with torch.device("cpu"):  # seeded weights, the same on every device
        models = {f: Evaluator(len(v)) for f, v in world.FACTORS.items()}
    models = {f: m.to(device) for f, m in models.items()}
    params = [p for m in models.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    bar = tqdm(range(steps), desc="evaluators", disable=not progress, mininterval=5)
    for _ in bar:
        with torch.device("cpu"):
            b = world.sample(batch_size, gen)
            sigma = noise * torch.rand(batch_size, 1, 1, 1, generator=gen)
            x = (b.images + sigma * torch.randn(b.images.shape, generator=gen)).to(device)
            labels = {f: v.to(device) for f, v in b.labels().items()}
        loss = sum(F.cross_entropy(m(x), labels[f]) for f, m in models.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return {f: m.cpu().eval() for f, m in models.items()}


def evaluate(
    evaluators: dict[str, Evaluator], n: int = 4000, seed: int = 12345, noise: float = 0.0
) -> dict[str, float]:
    """Held-out accuracy on ``n`` fresh ground-truth renders (optionally with input noise)."""
    gen = torch.Generator().manual_seed(seed)
    b = world.sample(n, gen)
    x = b.images + noise * torch.randn(b.images.shape, generator=gen)
    return score(evaluators, x, b.labels())


def save_evaluators(evaluators: dict[str, Evaluator], path, extra: dict | None = None) -> None:
    """``config.json`` + one safetensors file per factor; a symlink planted at one of those names is
    replaced, never written through (:func:`recipes.folders.replace_files`)."""
    from safetensors.torch import save_file

    from ..folders import replace_files

    cfg = {
        "factors": {f: list(world.FACTORS[f]) for f in evaluators},
        "configs": {f: m.config for f, m in evaluators.items()},
        "input": "B x 3 x 16 x 16 images in [-1, 1]",
    }
    if extra:
        cfg.update(extra)

    def write(tmp: Path) -> None:
        for f, m in evaluators.items():
            state = {k: v.detach().contiguous() for k, v in m.state_dict().items()}
            save_file(state, str(tmp / f"{f}.safetensors"))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")

    replace_files(Path(path), write)


def load_evaluators(path) -> dict[str, Evaluator]:
    """The evaluators of a folder written by :func:`save_evaluators`: factor names, sizes and files
    checked before anything is built (:mod:`recipes.folders`)."""
    from hub_cards import ArtifactError, read_json, read_safetensors

    from ..folders import check_fits, header, plain_name, positive_int, refuse_outside_links, weights_file

    path = Path(path)
    refuse_outside_links(path)
    where = path / "config.json"
    cfg = read_json(where, root=path)
    configs = cfg.get("configs") if isinstance(cfg, dict) else None
    if not (isinstance(configs, dict) and configs):
        raise ArtifactError(f"{where}: expected 'configs': {{factor: {{num_classes, width, hidden}}}}")
    out = {}
    for f, c in configs.items():
        weights = weights_file(path, f"{plain_name(f, where)}.safetensors")
        if not (isinstance(c, dict) and set(c) <= {"num_classes", "width", "hidden"}):
            raise ArtifactError(f"{where}: configs[{f!r}] must hold only num_classes, width, hidden; got {str(c)[:80]}")
        args = {
            k: positive_int(c, k, where, default) for k, default in (("num_classes", 4), ("width", 16), ("hidden", 64))
        }
        check_fits(partial(Evaluator, **args), header(weights, path), weights, where)
        m = Evaluator(**args)
        m.load_state_dict(read_safetensors(weights, root=path))
        out[f] = m.eval()
    return out


if __name__ == "__main__":  # quick check: python -m recipes.worlds.shapes_eval
    t0 = time.time()
    ev = train_evaluators()
    print(f"trained in {time.time() - t0:.0f} s", evaluate(ev), evaluate(ev, noise=0.1))
