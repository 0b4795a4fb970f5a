"""Known ground truth for TADA's localisation: a tones model in which only one known block can
see one factor.

The model is the tones world's ``StableAudioDiTModel``, fine-tuned with a *split view* of the
prompt: the text conditioning holds two token sequences side by side, the prompt and the same
prompt with the chosen factor's words replaced by an unknown word (``<unk>``); the visible
block's cross-attention reads the first, every other block's the second, and the pooled (global)
token comes from the masked prompt. Only the visible block can therefore learn the factor, and a
localisation sweep must rank it first (``tests/test_tada_ground_truth.py``).

The view is two forward pre-hooks per block, installed by :func:`install_split_view` when the
model loads (before any ``interventions`` session, so a session's hooks on
``transformer_blocks.i.attn2:input.encoder_hidden_states`` see the sliced conditioning).

Example::

    mask_factor("a fast sine melody in a major key with vocals", "vocals")
    # 'a fast sine melody in a major key mask'
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from recipes.worlds import tones as world
from recipes.worlds import tones_model as tm

__all__ = [
    "CHECKPOINT",
    "MASK_WORD",
    "SplitView",
    "SplitViewModel",
    "mask_factor",
    "install_split_view",
    "load_ground_truth",
]

CHECKPOINT = Path(__file__).resolve().parents[1] / "worlds" / "checkpoints" / "tones_tada_ground_truth"
MASK_WORD = "mask"  # not in the tones vocabulary: the word-level tokenizer maps it to <unk>


def mask_factor(prompt: str, factor: str) -> str:
    """``prompt`` with the words of ``factor`` (any synonym) replaced by one unknown word, so that
    the masked prompts of two values of the factor are the same token sequence."""
    if factor not in world.FACTORS:
        raise ValueError(f"unknown factor {factor!r}; the tones factors are {', '.join(world.FACTORS)}")
    phrases = sorted((p.split() for ws in world.SYNONYMS[factor].values() for p in ws), key=len, reverse=True)
    words = prompt.split()
    out: list[str] = []
    i = 0
    while i < len(words):
        hit = next((p for p in phrases if [w.lower() for w in words[i : i + len(p)]] == p), None)
        out.append(MASK_WORD if hit else words[i])
        i += len(hit) if hit else 1
    return " ".join(out)


@dataclass
class SplitView:
    """A forward pre-hook on one block's cross-attention: keep the token rows ``rows`` of the
    conditioning (``[:L]`` the prompt, ``[L:]`` the masked prompt)."""

    rows: slice

    def __call__(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        states = kwargs.get("encoder_hidden_states")
        if states is None:
            return None
        return args, {**kwargs, "encoder_hidden_states": states[:, self.rows]}


def install_split_view(transformer: torch.nn.Module, visible_block: int, length: int = world.MAX_LENGTH) -> list:
    """Make block ``visible_block`` read the prompt and every other block the masked prompt;
    returns the torch hook handles."""
    blocks = transformer.transformer_blocks
    if not 0 <= visible_block < len(blocks):
        raise ValueError(f"visible_block {visible_block} is not a block index (the model has {len(blocks)} blocks)")
    return [
        b.attn2.register_forward_pre_hook(
            SplitView(slice(0, length) if i == visible_block else slice(length, 2 * length)), with_kwargs=True
        )
        for i, b in enumerate(blocks)
    ]


@dataclass
class SplitViewModel(tm.TonesModel):
    """A tones model whose prompts are encoded as the split view (see the module docstring)."""

    factor: str = "timbre"
    visible_block: int = 2
    handles: list = field(default_factory=list, repr=False)

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(states, pooled)``: the prompt's and the masked prompt's token states side by side,
        and the masked prompt's pooled output."""
        full, _ = tm.encode_text(self.text_encoder, self.tokenizer, list(prompts))
        masked, pooled = tm.encode_text(
            self.text_encoder, self.tokenizer, [mask_factor(p, self.factor) for p in prompts]
        )
        return torch.cat([full, masked], 1), pooled


def load_ground_truth(path: str | Path | None = None) -> SplitViewModel:
    """The shipped ground-truth model (or one at ``path``) with its split view installed."""
    path = Path(path) if path is not None else CHECKPOINT
    spec_file = path / "ground_truth.json"
    if not spec_file.exists():
        raise FileNotFoundError(
            f"{spec_file} is missing: a ground-truth folder holds ground_truth.json (factor, visible_block); "
            "train one with python -m recipes.tada.train_ground_truth"
        )
    spec = json.loads(spec_file.read_text())
    base = tm.load_model(path)
    model = SplitViewModel(
        base.transformer,
        base.text_encoder,
        base.tokenizer,
        base.scheduler,
        base.rope_theta,
        factor=str(spec["factor"]),
        visible_block=int(spec["visible_block"]),
    )
    model.handles = install_split_view(model.transformer, model.visible_block)
    return model
