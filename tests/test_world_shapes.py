"""The shapes text-to-image world: generator, tokenizer, evaluators and the shipped pipeline.

Thresholds for prompt following come from measurements of the shipped checkpoint (see
``recipes/worlds/checkpoints/shapes/TRAINING.md``) with a margin for the small sample used here.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from recipes.worlds import shapes as world

CKPT = Path(__file__).resolve().parents[1] / "recipes" / "worlds" / "checkpoints" / "shapes"


# ---------------------------------------------------------------------------------------------
# the world


def test_generator_is_deterministic_for_a_seed():
    a = world.sample(64, torch.Generator().manual_seed(3))
    b = world.sample(64, torch.Generator().manual_seed(3))
    c = world.sample(64, torch.Generator().manual_seed(4))
    assert torch.equal(a.images, b.images)
    assert a.prompts == b.prompts
    for f in ("shape", "colour", "style", "cx", "cy", "size"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    assert not torch.equal(a.images, c.images)


def test_images_are_in_range_and_shapes_stay_inside_the_frame():
    b = world.sample(512, torch.Generator().manual_seed(0))
    assert b.images.shape == (512, 3, world.SIZE, world.SIZE)
    assert b.images.min() >= -1 and b.images.max() <= 1
    lit = (b.images > -1).any(1)
    area = lit.float().sum((1, 2))
    assert area.min() >= 20, "every image shows its object"
    # every lit object has a black margin somewhere: not clipped into a full-frame block
    assert (area < world.SIZE**2 / 2).all()
    # background stays black: the colour channels that are off for a colour stay at -1
    red = b.images[b.colour == world.COLOURS.index("red")]
    assert torch.all(red[:, 1:] == -1)


def test_factors_are_independent_and_every_value_appears():
    n = 8192
    b = world.sample(n, torch.Generator().manual_seed(1))
    labels = b.labels()
    for f, values in world.FACTORS.items():
        counts = torch.bincount(labels[f], minlength=len(values))
        assert (counts > 0).all()
        assert (counts - n / len(values)).abs().max() < 0.1 * n / len(values)
    # pairwise joint counts match the product of the marginals (uniform 4 x 4)
    for f1, f2 in itertools.combinations(world.FACTORS, 2):
        joint = torch.bincount(labels[f1] * 4 + labels[f2], minlength=16).float()
        expected = n / 16
        chi2 = ((joint - expected) ** 2 / expected).sum().item()
        assert chi2 < 45, (f1, f2, chi2)  # 9 dof: p < 1e-5
    # nuisances vary within each shape
    for s in range(len(world.SHAPES)):
        m = b.shape == s
        assert b.cx[m].std() > 1.0 and b.cy[m].std() > 1.0 and b.size[m].std() > 0.3


def test_every_factor_value_changes_the_image():
    base = dict(
        shape=torch.tensor([0]),
        colour=torch.tensor([0]),
        style=torch.tensor([0]),
        cx=torch.tensor([8.0]),
        cy=torch.tensor([8.0]),
        size=torch.tensor([4.5]),
    )
    ref = world.render(**base)
    for f, values in world.FACTORS.items():
        imgs = [world.render(**{**base, f: torch.tensor([v])}) for v in range(len(values))]
        for i, j in itertools.combinations(range(len(values)), 2):
            assert not torch.equal(imgs[i], imgs[j]), (f, values[i], values[j])
    assert torch.equal(ref, world.render(**base))


def test_prompts_name_the_factors_with_synonyms():
    b = world.sample(1024, torch.Generator().manual_seed(2))
    for i, p in enumerate(b.prompts):
        parsed = world.parse_prompt(p)
        assert parsed == {f: int(b.labels()[f][i]) for f in world.FACTORS}, p
    assert world.make_prompt(0, 0, 1) == "a red circle in striped style"
    words = {w for p in b.prompts for w in p.split()}
    for table in world.SYNONYMS.values():
        for syns in table.values():
            assert set(syns) <= words  # every synonym is used


def test_tokenizer_is_word_level_with_bos_eos_and_fits_the_positions():
    tok = world.build_tokenizer()
    vocab = world.vocabulary()
    enc = tok(
        ["a red circle in striped style", ""],
        padding="max_length",
        max_length=world.MAX_LENGTH,
        truncation=True,
        return_tensors="pt",
    )
    ids = enc.input_ids
    assert ids.shape == (2, world.MAX_LENGTH)
    assert ids[0].tolist() == [vocab[w] for w in "<bos> a red circle in striped style <eos>".split()]
    assert ids[1, :2].tolist() == [vocab["<bos>"], vocab["<eos>"]]
    assert (ids[1, 2:] == vocab["<pad>"]).all()
    assert tok("a purple circle").input_ids[2] == vocab["<unk>"]
    for t in range(len(world.TEMPLATES)):
        p = world.make_prompt(3, 3, 3, template=t, synonyms=(1, 1, 1))
        assert len(tok(p).input_ids) <= world.MAX_LENGTH
        assert vocab["<unk>"] not in tok(p).input_ids


# ---------------------------------------------------------------------------------------------
# evaluators and the shipped checkpoint

needs_ckpt = pytest.mark.skipif(not (CKPT / "model_index.json").exists(), reason="shipped shapes checkpoint missing")


@pytest.fixture(scope="module")
def evaluators():
    from recipes.worlds.shapes_model import load_evaluators

    return load_evaluators()


@pytest.fixture(scope="module")
def pipe():
    pytest.importorskip("diffusers")
    from recipes.worlds.shapes_model import load_pipeline

    return load_pipeline()


@needs_ckpt
def test_shipped_checkpoint_is_small_and_pickle_free():
    files = [p for p in CKPT.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 8 * 2**20
    assert {p.suffix for p in files} <= {".json", ".safetensors", ".md", ".png"}
    assert (CKPT / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (CKPT / "tokenizer" / "tokenizer.json").exists()


@needs_ckpt
def test_evaluators_score_at_least_95_percent_on_fresh_ground_truth(evaluators):
    from recipes.worlds.shapes_eval import evaluate

    acc = evaluate(evaluators, n=2000, seed=2024)
    for f in world.FACTORS:
        assert acc[f] >= 0.95, acc
    noisy = evaluate(evaluators, n=2000, seed=2025, noise=0.05)
    for f in world.FACTORS:
        assert noisy[f] >= 0.95, noisy


@needs_ckpt
def test_shipped_pipeline_is_a_real_stable_diffusion_pipeline(pipe):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    assert isinstance(pipe, StableDiffusionPipeline)
    assert isinstance(pipe.unet, UNet2DConditionModel)
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert isinstance(pipe.vae, AutoencoderKL)
    assert pipe.vae_scale_factor == 1 and pipe.vae.config.scaling_factor == 1
    assert pipe.scheduler.config.clip_sample is False
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(pipe.vae.decode(x).sample, x)
    assert torch.equal(pipe.vae.encode(x).latent_dist.sample(), x)


def _follow(pipe, evaluators, n, guidance, steps, seed):
    from recipes.worlds.shapes_report import measure

    return measure(pipe, evaluators, n=n, scales=(guidance,), steps=steps, seed=seed)[str(float(guidance))]


@needs_ckpt
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_shipped_pipeline_follows_prompts(pipe, evaluators, guidance):
    r = _follow(pipe, evaluators, n=16, guidance=guidance, steps=10, seed=11)
    # The shipped checkpoint (5,750 steps) measured all 0.94 / 1.00 at guidance 1 / 3 on these 16
    # prompts (0.945 / 1.000 on 128 prompts, 25 steps: checkpoints/shapes/TRAINING.md). The bar
    # leaves one prompt of slack for platform-level numeric differences.
    assert r["all"] >= 0.875, r
    for f in world.FACTORS:
        assert r[f] >= 0.875, r


@needs_ckpt
def test_samples_differ_across_seeds_in_free_factors(pipe, evaluators):
    from recipes.worlds.shapes_eval import predict
    from recipes.worlds.shapes_report import generate

    prompts = ["a red circle in striped style"] * 8
    a = generate(pipe, prompts, 3.0, steps=10, seed=0)
    b = generate(pipe, prompts, 3.0, steps=10, seed=1)
    assert (a - b).abs().mean() > 0.05
    assert not torch.equal(a[0], a[1])  # different noise within one call too
    lit = ((torch.cat([a, b]) + 1) / 2).amax(1) > 0.2
    coords = torch.arange(world.SIZE, dtype=torch.float32) + 0.5
    w = lit.float() / lit.float().sum((1, 2), keepdim=True).clamp(min=1)
    cx = (w.sum(1) * coords).sum(-1)
    assert cx.std() > 0.5  # position varies across seeds
    pred = predict(evaluators, torch.cat([a, b]))
    assert (pred["colour"] == 0).float().mean() >= 0.75
