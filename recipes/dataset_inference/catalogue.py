"""The catalogue world: tones clips played with per-note loudness, so that every clip is unique.

Why: a tones clip (:mod:`recipes.worlds.tones`) is fixed by its discrete factors (36 instrumental
clips in all), so a "member" and a "non-member" would often be the same clip and membership
would be undefined. Here every note gets its own velocity: the note bins of the representation
are scaled in amplitude by ``v ~ U[VELOCITY_LO, 1]`` per note (``rep' = sqrt(v) (rep + 1) - 1``;
4 notes per clip when slow, 8 when fast), the vocal bands keep their continuous syllable envelope.

The *member set* of a model is a fixed draw of ``n`` clips from ``generator`` seeded with
``MEMBER_SEED``; non-members are fresh draws from the same distribution with other seeds, so the
truth is known and members and non-members are i.i.d. before training. Each clip comes with a
fixed caption (a paraphrased prompt of its factors), as a training set would.

>>> import torch
>>> clips = draw(4, torch.Generator().manual_seed(0))
>>> tuple(clips.reps.shape), len(clips.prompts)
((4, 53, 16), 4)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recipes.worlds import tones as world

__all__ = ["VELOCITY_LO", "MEMBER_SEED", "Clips", "draw", "members", "fresh"]

VELOCITY_LO = 0.3  # quietest note: amplitude x 0.3 (sqrt domain x 0.55)
MEMBER_SEED = 2026  # the shipped model's member set: draw(n, Generator().manual_seed(MEMBER_SEED))
_FRESH_OFFSET = 1_000_000  # fresh draws use seeds >= this, never MEMBER_SEED


@dataclass
class Clips:
    """A set of clips: representations ``N x 53 x 16`` in ``[-1, 1]`` and their captions."""

    reps: torch.Tensor
    prompts: list[str]

    def __len__(self) -> int:
        return len(self.prompts)


def _velocities(f: dict[str, torch.Tensor], generator: torch.Generator | None) -> torch.Tensor:
    """Per-frame amplitude gain ``N x 16`` (constant over each note)."""
    n = len(f["timbre"])
    per_note = VELOCITY_LO + (1 - VELOCITY_LO) * torch.rand(n, world.N_FRAMES, generator=generator)
    frames_per_note = torch.tensor(world.FRAMES_PER_NOTE)[f["tempo"]]  # N
    note_of_frame = torch.arange(world.N_FRAMES)[None, :] // frames_per_note[:, None]  # N x 16
    return per_note.gather(1, note_of_frame)


def draw(n: int, generator: torch.Generator | None = None) -> Clips:
    """``n`` clips with per-note velocities and paraphrased captions, deterministic for ``generator``."""
    if n < 1:
        raise ValueError(f"draw needs n >= 1 clips, got {n}")
    f = world.sample_factors(n, generator)
    prompts = world.make_prompts(f, generator)
    gain = _velocities(f, generator).sqrt()  # amplitude -> the representation's sqrt domain
    spec = world.represent(f, tokens=False)
    notes = gain[:, None, :] * (spec[:, : world.N_NOTE_BINS] + 1) - 1
    spec = torch.cat([notes, spec[:, world.N_NOTE_BINS :]], 1)
    return Clips(world.patchify(spec), prompts)


def members(n: int, seed: int = MEMBER_SEED) -> Clips:
    """The member (training) set: the first ``n`` clips drawn with ``seed``."""
    return draw(n, torch.Generator().manual_seed(seed))


def fresh(n: int, seed: int) -> Clips:
    """``n`` non-member clips from the same distribution (seed ``seed`` never collides with the
    member seed)."""
    if seed < 0:
        raise ValueError(f"fresh draws need a seed >= 0, got {seed}")
    return draw(n, torch.Generator().manual_seed(_FRESH_OFFSET + seed))
