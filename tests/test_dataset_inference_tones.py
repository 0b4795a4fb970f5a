"""recipes.dataset_inference on the catalogue world and the shipped tones members model (tiny sets)."""

from __future__ import annotations

import json

import pytest
import torch

from recipes.dataset_inference import catalogue
from recipes.dataset_inference.run import TONES_MEMBERS_DIR
from recipes.worlds import tones as world

torch.set_num_threads(1)


def test_catalogue_clips_are_unique_and_keep_the_tones_structure():
    clips = catalogue.members(64)
    again = catalogue.members(64)
    assert torch.equal(clips.reps, again.reps) and clips.prompts == again.prompts
    assert tuple(clips.reps.shape) == (64, world.N_CHANNELS, world.N_TOKENS)
    assert len({tuple(r.flatten().tolist()) for r in clips.reps}) == 64  # no two clips alike
    other = catalogue.fresh(64, seed=0)
    assert not bool(torch.isclose(clips.reps[:, None], other.reps[None]).flatten(2).all(-1).any())
    # velocities only scale the note bins: silent bins stay silent, amplitudes stay within [VELOCITY_LO, 1]
    f = world.sample_factors(64, torch.Generator().manual_seed(catalogue.MEMBER_SEED))
    base = world.represent(f)
    silent = base == -1
    assert bool((clips.reps[silent] == -1).all())
    ratio = ((clips.reps + 1) / (base + 1).clamp_min(1e-6))[:, : world.N_NOTE_BINS][~silent[:, : world.N_NOTE_BINS]]
    assert float(ratio.min()) >= catalogue.VELOCITY_LO**0.5 - 1e-5 and float(ratio.max()) <= 1 + 1e-5
    with pytest.raises(ValueError, match="n >= 1"):
        catalogue.draw(0)
