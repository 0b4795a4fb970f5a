"""The script that trained the shipped world checkpoints (``python -m recipes.worlds.train``): a few
steps of each world at batch 4 write a loadable checkpoint, and a resumed run ends bit-identical
to a straight one (the shipped checkpoints were trained in resumed segments)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from recipes.worlds import shapes_model, tones_model
from recipes.worlds.train import main

pytestmark = pytest.mark.usefixtures("one_thread")


def train(world: str, root: Path, steps: int, *extra: str) -> Path:
    args = [
        world,
        "--steps",
        str(steps),
        "--batch-size",
        "4",
        "--out",
        str(root / "out"),
        "--state",
        str(root / "state"),
    ]
    main([*args, "--save-every", "2", "--eval-every", "0", "--threads", "1", *extra])
    return root / "state" / "state.safetensors"


@pytest.mark.parametrize("world", ["tones", "shapes"])
def test_training_writes_a_checkpoint_and_resumes_exactly(world, tmp_path):
    extra = ("--skip-evaluators",) if world == "shapes" else ()
    straight = load_file(train(world, tmp_path / "straight", 4, *extra))
    halfway = load_file(train(world, tmp_path / "resumed", 2, *extra))
    resumed = load_file(train(world, tmp_path / "resumed", 2, "--resume", *extra))
    assert straight.keys() == resumed.keys()
    different = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert different == []
    assert any(not torch.equal(halfway[k], resumed[k]) for k in resumed if k.startswith("unet."))  # it trained on
    out = tmp_path / "straight" / "out"
    if world == "tones":
        model = tones_model.load_model(out)
        ema = {k[len("ema_text.") :]: v for k, v in straight.items() if k.startswith("ema_text.")}
        assert all(torch.equal(model.text_encoder.state_dict()[k], v) for k, v in ema.items())
    else:
        pipe = shapes_model.load_pipeline(out)
        ema = {k[len("ema_unet.") :]: v for k, v in straight.items() if k.startswith("ema_unet.")}
        assert all(torch.equal(pipe.unet.state_dict()[k], v) for k, v in ema.items())
