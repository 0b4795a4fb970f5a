"""What the demo does on any model: localize a concept with a patching sweep over every
cross-attention layer's conditioning input, then steer it with a contrastive (CAA) vector at the
localized layer. A :class:`Task` says which model, prompts and judge; :mod:`.worlds` builds them.

The same two functions run the shipped shapes and tones worlds and a real Stable Diffusion 1.5
checkpoint: only the :class:`Task` differs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from interventions import Cache, MemoryStore, PatchingTable, When, attach, patching_sweep
from interventions.steering import SteeringVector

__all__ = ["Task", "localize", "steer", "short_name", "steering_site"]

#: TADA's localisation patches what a cross-attention layer reads from the prompt
CONDITIONING = "@cross_attn:input.encoder_hidden_states"


@dataclass
class Task:
    """A contrast to localize and steer on one model.

    ``generate(prompts, seed)`` returns the model's outputs (images in ``[0, 1]``, or tone
    representations) from noise seeded by ``seed``; ``judge(outputs, prompts)`` returns per-sample
    tensors: ``margin`` (how strongly the positive concept shows; its mean is the patching metric),
    ``hit`` (judged positive) and any ``... kept`` factors that steering should leave alone.
    ``model`` is what hooks attach to (a pipeline, or a bare denoiser with ``attach_kw``'s ``cfg``).
    """

    name: str
    model: Any
    generate: Callable[[Sequence[str], int], torch.Tensor]
    judge: Callable[[torch.Tensor, Sequence[str]], dict[str, torch.Tensor]]
    positive: str
    clean: str  # a prompt with the positive concept
    corrupt: str  # the same prompt with the negative concept
    pos_prompts: tuple[str, ...]
    neg_prompts: tuple[str, ...]
    targets: tuple[str, ...]  # prompts with the negative concept, steered towards the positive
    steps: int
    strengths: tuple[float, ...]  # the steering sweep (0 first: the unsteered outputs)
    attach_kw: dict[str, Any] = field(default_factory=dict)


def short_name(site: str) -> str:
    """``unet.mid_block.attentions.0.transformer_blocks.0.attn2:input...`` -> ``mid_block.attentions.0``."""
    module = site.split(":")[0].removeprefix("unet.")
    return module.replace(".transformer_blocks.0.attn2", "").replace(".attn2", "")


def steering_site(site: str) -> str:
    """The cross-attention output (what CAA steers) of a localized conditioning input site."""
    return site.split(":")[0]


def localize(task: Task, n: int, columns: Sequence[Any], progress: bool = True) -> PatchingTable:
    """Patch the clean prompt's conditioning into the corrupt run, one cross-attention layer and
    one step window at a time (``n`` samples per run), scored by the judge's mean margin."""

    def run(prompt: str) -> Callable[[], torch.Tensor]:
        return lambda: task.generate([prompt] * n, 0)

    def metric(out: torch.Tensor) -> torch.Tensor:
        return task.judge(out, [task.corrupt] * n)["margin"].float().mean()

    return patching_sweep(
        task.model,
        [CONDITIONING],
        run(task.clean),
        run(task.corrupt),
        metric,
        steps=columns,
        progress=progress,
        **task.attach_kw,
    )


def _cond_cache(task: Task, site: str, prompts: Sequence[str], seed: int) -> MemoryStore:
    store = MemoryStore()
    with (
        torch.no_grad(),
        attach(task.model, {site: Cache(store, on_repeat="append", when=When(branch="cond"))}, **task.attach_kw),
    ):
        task.generate(list(prompts), seed)
    return store


def steer(
    task: Task,
    site: str,
    strengths: Sequence[float],
    targets: Sequence[str] | None = None,
    seed: int = 5,
    progress: bool = True,
) -> tuple[torch.Tensor, list[dict[str, Any]], SteeringVector]:
    """A per-step unit CAA vector at ``site`` (cond branch: positive minus negative prompts),
    added with norm restore (TADA's rule) at each strength to ``targets`` (default: the task's).

    Returns the outputs ``[strengths, targets, ...]``, one row of judged effects per strength,
    and the vector."""
    vector = SteeringVector.contrastive(
        _cond_cache(task, site, task.pos_prompts, 1),
        _cond_cache(task, site, task.neg_prompts, 1),
        sites=[site],
        branch="cond",
        per_step=True,
        unit=True,
    )
    targets = list(task.targets if targets is None else targets)
    outputs, rows = [], []
    for s in tqdm(strengths, desc="steering sweep", disable=not progress):
        with torch.no_grad(), vector.attach(task.model, scale=float(s), restore_norm=True, **task.attach_kw):
            out = task.generate(targets, seed)
        judged = task.judge(out, targets)
        row: dict[str, Any] = {"strength": float(s), f"judged {task.positive}": judged["hit"].float().mean().item()}
        row["margin"] = judged["margin"].float().mean().item()
        row.update({k: v.float().mean().item() for k, v in judged.items() if k.endswith("kept")})
        rows.append(row)
        outputs.append(out)
    return torch.stack(outputs), rows, vector
