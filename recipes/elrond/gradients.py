"""ELROND's gradients: how the prompt embedding of the concept token would have to move for a
regenerated image A to become image B.

For one prompt: sample images, pair them at random (A, B), noise each A fully (the first
timestep of a short DDIM schedule), regenerate it with the prompt while keeping the graph, and
take ``d dist(x0(A), B) / d e_tok``, the gradient w.r.t. the text encoder's output at the concept
token (``dist``: the paper's pixel MSE, or the same after moving both images to a canonical
position and size, :mod:`recipes.elrond.distance`). ``Grads`` at the UNet's
``:input.encoder_hidden_states`` (attached to the bare UNet, with its ``[uncond, cond]`` CFG rows
declared) collects it at every UNet call (one leaf per call); their sum is the gradient w.r.t. the
one embedding all calls share. Diffusers
pipelines sample under ``no_grad``, so the loop calls the UNet itself; the pairs are batched (the
UNet treats rows independently, so the gradient of the summed loss is each pair's own).

SDXL pipelines (DMD2 is one: an SDXL UNet distilled to 4 steps) condition the UNet on both text
encoders' outputs, concatenated per token (``encoder_hidden_states``, the gradient site, so the
concept token's gradient has both encoders' widths), and on ``added_cond_kwargs``: the second
encoder's pooled embedding (``text_embeds``) and the image size (``time_ids``), which the loop
passes on both CFG branches (:func:`pooled`, :func:`added_cond_kwargs`). The unconditional prompt
is the pipeline's own default: the empty prompt, or zeros where SDXL's
``force_zeros_for_empty_prompt`` says so.

>>> from recipes.worlds.shapes_model import load_pipeline
>>> pipe = load_pipeline()
>>> concept_position(pipe.tokenizer, "a striped circle")
3
>>> concept_position(pipe.tokenizer, "a striped circle", word="striped")
2
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interventions import DiskStore, Grads, MemoryStore, When, attach

from .distance import DISTANCES

SITE = ":input.encoder_hidden_states"  # on pipe.unet
KEY = ("elrond/grads", 0, None)  # where the concept-token gradients are appended in the DiskStore


@dataclass
class Setting:
    """How images are sampled and regenerated (the defaults suit the shapes model)."""

    sample_steps: int = 10  # DDIM steps of the pipeline that draws the images
    regen_steps: int = 4  # DDIM steps of the regeneration the gradient flows through
    guidance: float = 3.0
    batch: int = 32
    distance: str = "pixel"  # a key of recipes.elrond.distance.DISTANCES

    def __post_init__(self) -> None:
        if self.distance not in DISTANCES:
            raise ValueError(f"unknown distance {self.distance!r}: use one of {sorted(DISTANCES)}")


def concept_position(tokenizer: Any, prompt: str, word: str | None = None) -> int:
    """Token position of ``word`` (default: the prompt's last word) in the encoded prompt (the last
    sub-token of a word split into several). Refuses words the tokenizer does not know."""
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    unk = tokenizer.unk_token_id
    words = prompt.split()
    if not words:
        raise ValueError("the prompt is empty: ELROND needs a concept token")
    unknown = [w for w in words if unk is not None and unk in tokenizer(w, add_special_tokens=False).input_ids]
    if unknown:
        raise ValueError(
            f"unknown word(s) {unknown} in prompt {prompt!r}: the tokenizer maps them to {tokenizer.unk_token}"
        )
    word = word or words[-1]
    if word not in words:
        raise ValueError(f"concept word {word!r} is not in the prompt {prompt!r}")
    sub = tokenizer(word, add_special_tokens=False).input_ids
    for start in range(len(ids) - len(sub) + 1):
        if ids[start : start + len(sub)] == sub:
            return start + len(sub) - 1
    raise ValueError(f"concept word {word!r} was truncated away from prompt {prompt!r}")


def encoded(pipe: Any, prompt: str, n: int) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor] | None]:
    """One text encoding of ``prompt`` and of the unconditional prompt, ``n`` rows each: the
    UNet's ``encoder_hidden_states`` for both, and SDXL's pooled embeddings (``None`` for a UNet
    that takes none)."""
    with torch.no_grad():
        out = pipe.encode_prompt(prompt, device=pipe.device, num_images_per_prompt=n, do_classifier_free_guidance=True)
    return out[0], out[1], (out[2], out[3]) if is_sdxl(pipe) else None


def embed(pipe: Any, prompt: str, n: int) -> tuple[Tensor, Tensor]:
    """The UNet's ``encoder_hidden_states`` for ``prompt`` and for the unconditional prompt, ``n``
    rows each."""
    cond, uncond, _ = encoded(pipe, prompt, n)
    return cond, uncond


def is_sdxl(pipe: Any) -> bool:
    """Whether the UNet takes SDXL's ``added_cond_kwargs`` (``addition_embed_type="text_time"``)."""
    return getattr(pipe.unet.config, "addition_embed_type", None) == "text_time"


def pooled(pipe: Any, prompt: str, n: int) -> tuple[Tensor, Tensor] | None:
    """SDXL: the second text encoder's pooled embeddings of ``prompt`` and of the unconditional
    prompt, ``n`` rows each; ``None`` for a UNet that takes none."""
    return encoded(pipe, prompt, n)[2] if is_sdxl(pipe) else None


def added_cond_kwargs(pipe: Any, pooled_embeds: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
    """SDXL's ``added_cond_kwargs`` for UNet rows ``[uncond, cond]``: the pooled embeddings and
    the ``time_ids`` the pipeline uses by default (original and target size = the image size, crop
    at the origin)."""
    cond, uncond = pooled_embeds
    h, w = (s * pipe.vae_scale_factor for s in _latent_hw(pipe))
    time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=cond.dtype, device=cond.device)
    return {"text_embeds": torch.cat([uncond, cond]), "time_ids": time_ids.expand(2 * len(cond), -1)}


def _check_pooled(pipe: Any, pooled_embeds: tuple[Tensor, Tensor] | None) -> None:
    if is_sdxl(pipe) != (pooled_embeds is not None):
        need = "needs the pooled embeddings" if is_sdxl(pipe) else "takes no pooled embeddings"
        raise ValueError(f"this UNet {need}: pass pooled_embeds=pooled(pipe, prompt, n)")


def sample(
    pipe: Any,
    prompt_embeds: Tensor,
    uncond: Tensor,
    setting: Setting,
    seed: int,
    pooled_embeds: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Latents (``output_type="latent"``) that the pipeline draws for the given embeddings
    (``pooled_embeds``: SDXL's, :func:`pooled`)."""
    _check_pooled(pipe, pooled_embeds)
    g = torch.Generator(device="cpu").manual_seed(seed)
    shape = (len(prompt_embeds), pipe.unet.config.in_channels, *_latent_hw(pipe))
    noise = torch.randn(shape, generator=g).to(pipe.device, prompt_embeds.dtype)
    extra = {}
    if pooled_embeds is not None:
        extra = {"pooled_prompt_embeds": pooled_embeds[0], "negative_pooled_prompt_embeds": pooled_embeds[1]}
    out = pipe(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=uncond,
        latents=noise,
        num_inference_steps=setting.sample_steps,
        guidance_scale=setting.guidance,
        output_type="latent",
        **extra,
    )
    return out.images


def _latent_hw(pipe: Any) -> tuple[int, int]:
    size = pipe.unet.config.sample_size
    return (size, size) if isinstance(size, int) else tuple(size)


def regenerate(
    pipe: Any,
    noisy: Tensor,
    cond: Tensor,
    uncond: Tensor,
    setting: Setting,
    pooled_embeds: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """DDIM from the fully noised ``noisy`` to ``x0`` with gradients kept (CFG batched as
    ``[uncond, cond]``, the pipeline's layout; an SDXL UNet also gets :func:`added_cond_kwargs` of
    ``pooled_embeds``)."""
    from diffusers import DDIMScheduler

    _check_pooled(pipe, pooled_embeds)
    extra = {} if pooled_embeds is None else {"added_cond_kwargs": added_cond_kwargs(pipe, pooled_embeds)}
    sched = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    sched.set_timesteps(setting.regen_steps, device=noisy.device)
    x, embeds = noisy, torch.cat([uncond, cond])
    for t in sched.timesteps:
        eps_u, eps_c = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=embeds, **extra).sample.chunk(2)
        x = sched.step(eps_u + setting.guidance * (eps_c - eps_u), t, x).prev_sample
    return x


def fully_noised(pipe: Any, x0: Tensor, setting: Setting, generator: torch.Generator) -> Tensor:
    """``x0`` noised to the first timestep of the regeneration schedule."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(setting.regen_steps)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    return sched.add_noise(x0, noise, sched.timesteps[:1])


def pair_gradients(pipe: Any, a: Tensor, b: Tensor, prompt: str, setting: Setting, seed: int) -> Tensor:
    """``d sum_i dist(regen(A_i), B_i) / d prompt_embeds`` (``pairs x tokens x D``), collected by
    ``Grads`` on the conditional rows of every UNet call and summed over the calls."""
    cond, uncond, extra = encoded(pipe, prompt, len(a))
    noisy = fully_noised(pipe, a, setting, torch.Generator().manual_seed(seed))
    grads = Grads(MemoryStore(), when=When(branch="cond"))
    with torch.enable_grad(), frozen(pipe.unet), attach(pipe.unet, {SITE: grads}, cfg=("uncond", "cond")):
        x0 = regenerate(pipe, noisy, cond, uncond, setting, extra)
        loss = DISTANCES[setting.distance](x0, b).sum()
        loss.backward()
    return sum(grads.store.get(k) for k in grads.store.keys()).float().cpu()  # type: ignore[union-attr]


@contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """``module``'s parameters without gradients for the duration, restored after: the backward
    pass then computes only what flows to the conditioning, not the weights' gradients (the same
    numbers, measured bit for bit; a quarter to a third less CPU for the shapes UNet's regeneration).

    >>> layer = torch.nn.Linear(2, 2)
    >>> with frozen(layer):
    ...     layer.weight.requires_grad
    False
    >>> layer.weight.requires_grad
    True
    """
    saved = [(p, p.requires_grad) for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def collect(
    pipe: Any,
    prompt: str,
    n: int,
    store: DiskStore,
    *,
    word: str | None = None,
    setting: Setting | None = None,
    seed: int = 0,
    progress: bool = True,
    self_pairs: bool = False,
) -> Tensor:
    """Sample ``n`` images of ``prompt``, pair them at random, and append the concept-token
    gradient of every pair to ``store`` under :data:`KEY`; returns all of them (``n x D``). With
    ``self_pairs`` every image is its own target (B = A, the same images and noise): the spread the
    regeneration makes by itself, a null for the spread between samples."""
    from tqdm.auto import tqdm

    setting = setting or Setting()
    position = concept_position(pipe.tokenizer, prompt, word)
    rows = []
    for i, (lo, hi) in enumerate(
        tqdm(list(_chunks(n, setting.batch)), desc=f"ELROND {prompt!r}", disable=not progress)
    ):
        cond, uncond, pooled_embeds = encoded(pipe, prompt, hi - lo)
        images = sample(pipe, cond, uncond, setting, seed * 100_003 + i, pooled_embeds)
        order = torch.randperm(hi - lo, generator=torch.Generator().manual_seed(seed * 100_003 + i))
        b = images[order]
        a = b if self_pairs else images[order.roll(1)]  # a random cycle: no image is paired with itself
        g = pair_gradients(pipe, a, b, prompt, setting, seed=seed * 100_003 + i + 50_000)[:, position]
        store.append(KEY, g)
        rows.append(g)
    store.flush()
    return torch.cat(rows)


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)
