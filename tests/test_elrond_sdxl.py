"""ELROND on an SDXL pipeline (the real-checkpoint path of DMD2): a tiny StableDiffusionXLPipeline
built from config with the real diffusers / transformers classes (``tests.tiny_models.sdxl_pipeline``:
two CLIP text encoders, a UNet with ``addition_embed_type="text_time"``), random weights, fixed seeds."""

import json

import pytest
import torch

from interventions import DiskStore
from interventions.subspace import complexity, pca
from recipes.elrond.cli import load_model, main
from recipes.elrond.distance import pixel
from recipes.elrond.gradients import (
    Setting,
    added_cond_kwargs,
    collect,
    embed,
    fully_noised,
    pair_gradients,
    pooled,
    regenerate,
    sample,
)
from tests.tiny_models import CLIP_MAX_LEN, sdxl_pipeline

SETTING = Setting(sample_steps=2, regen_steps=2, guidance=3.0, batch=4)


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return sdxl_pipeline()


def test_added_cond_kwargs_are_what_the_sdxl_pipeline_passes_its_unet(pipe):
    seen = []
    handle = pipe.unet.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["added_cond_kwargs"]), with_kwargs=True
    )
    try:
        pipe("a red circle", num_inference_steps=1, guidance_scale=3.0, output_type="latent")
    finally:
        handle.remove()
    ours = added_cond_kwargs(pipe, pooled(pipe, "a red circle", 1))
    assert ours["text_embeds"].shape == (2, 16) and ours["time_ids"].tolist() == [[16, 16, 0, 0, 16, 16]] * 2
    assert float(ours["text_embeds"][0].abs().max()) == 0.0  # force_zeros_for_empty_prompt
    torch.testing.assert_close(ours["text_embeds"], seen[0]["text_embeds"], rtol=0, atol=0)
    torch.testing.assert_close(ours["time_ids"], seen[0]["time_ids"], rtol=0, atol=0)


def test_sdxl_hook_gradients_equal_autograd(pipe):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    hooked = pair_gradients(pipe, a, b, "a red circle", SETTING, seed=5)
    cond, uncond = embed(pipe, "a red circle", 3)
    cond.requires_grad_(True)
    with torch.enable_grad():
        noisy = fully_noised(pipe, a, SETTING, torch.Generator().manual_seed(5))
        x0 = regenerate(pipe, noisy, cond, uncond, SETTING, pooled(pipe, "a red circle", 3))
        (direct,) = torch.autograd.grad(pixel(x0, b).sum(), cond)
    assert hooked.shape == (3, CLIP_MAX_LEN, 64)  # both encoders' widths at every token
    assert float(direct[:, 3].abs().max()) > 1e-4  # the concept token gets a real gradient
    torch.testing.assert_close(hooked, direct, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="needs the pooled embeddings"):
        regenerate(pipe, noisy, cond, uncond, SETTING)
    with pytest.raises(ValueError, match="needs the pooled embeddings"):
        sample(pipe, cond.detach(), uncond, SETTING, seed=0)


def test_sdxl_gradients_and_directions_end_to_end(pipe, tmp_path):
    grads = collect(pipe, "a red circle", 8, DiskStore(tmp_path), setting=SETTING, progress=False)
    assert grads.shape == (8, 64) and bool(torch.isfinite(grads).all())
    assert float(grads.norm(dim=1).min()) > 0
    with DiskStore(tmp_path) as store:  # streamed, and read back bit for bit
        torch.testing.assert_close(store.get(("elrond/grads", 0, None)), grads, rtol=0, atol=0)
    directions, ratios = pca(grads)
    assert directions.shape[1] == 64 and bool(torch.isfinite(directions).all())
    torch.testing.assert_close(directions @ directions.T, torch.eye(len(directions)), rtol=0, atol=1e-5)
    assert 1 <= complexity(grads)["components_95"] <= 7


def test_cli_runs_an_sdxl_folder_and_loads_a_unet_from_safetensors(pipe, tmp_path):
    from diffusers import DDIMScheduler
    from safetensors.torch import save_file

    pipe.save_pretrained(tmp_path / "sdxl", safe_serialization=True)
    other = sdxl_pipeline(seed=1).unet.state_dict()
    save_file(other, str(tmp_path / "unet.safetensors"))
    loaded = load_model(str(tmp_path / "sdxl"), unet=tmp_path / "unet.safetensors", lcm=True)
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    torch.testing.assert_close(loaded.unet.state_dict()[key], other[key], rtol=0, atol=0)
    assert type(loaded.scheduler).__name__ == "LCMScheduler" and loaded.scheduler.config.timestep_spacing == "trailing"
    regen = DDIMScheduler.from_config(loaded.scheduler.config)  # what regenerate() builds from it
    regen.set_timesteps(4)
    assert regen.timesteps.tolist() == [999, 749, 499, 249]  # DMD2's 4 steps, from full noise
    bad = {k: v for k, v in other.items() if "add_embedding" not in k}
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(SystemExit, match="keys missing"):
        load_model(str(tmp_path / "sdxl"), unet=tmp_path / "bad.safetensors")
    with pytest.raises(SystemExit, match="only safetensors"):
        load_model(str(tmp_path / "sdxl"), unet=tmp_path / "unet.bin")
    out = tmp_path / "run"
    argv = ["--model", str(tmp_path / "sdxl"), "--prompt", "a red circle", "--steer", "a red circle", "--seeds", "0"]
    argv += ["--n", "8", "--batch", "4", "--sample-steps", "2", "--regen-steps", "2", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "elrond_sdxl.json").read_text())
    cell = result["prompts"]["a red circle"]["complexity"]["0"]
    assert cell["median_norm"] > 0 and cell["components_95"] >= 1
    with DiskStore(out / "grads" / "a_red_circle" / "seed0") as store:
        held = store.get(("elrond/grads", 0, None))
    assert held.shape == (8, 64)
    assert cell["median_norm"] == pytest.approx(float(held.norm(dim=1).median()), rel=1e-4)
