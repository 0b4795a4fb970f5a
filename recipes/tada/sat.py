"""A stable-audio-tools model in place of the tones model: a ``ConditionedDiffusionModelWrapper``
with a ``DiTWrapper`` (Stable Audio Open in the authors' own format: ``model_config.json`` +
``model.safetensors``), through the same :func:`~recipes.tada.localize.localize`,
:func:`~recipes.tada.caa.caa_vectors`, steering curves and SAE functions as the tones world.

What differs from the diffusers path is said here once, and the functions ask the model:

- the sites: the DiT's layers are ``<dit>.transformer.layers.<i>`` and each one's cross-attention
  is ``cross_attn``, called as ``cross_attn(x, context=...)``: TADA patches
  ``...cross_attn:input.context`` and steers ``...cross_attn``'s output;
- the CFG rows: ``DiffusionTransformer`` builds its CFG batch itself, ``[cond, uncond]`` (the
  uncond rows get null conditioning); ``attach`` knows it from its stable-audio-tools adapter,
  so :attr:`SatModel.cfg` is None;
- sampling: stable-audio-tools' own ``generate_diffusion_cond`` (k-diffusion, one DiT call per
  step; ``dpmpp-3m-sde`` with Stable Audio Open's sigmas for the ``v`` objective, ``euler`` for
  rectified flow), seeded so that a clean and a swapped run start from the same noise.

The real checkpoint (GPU; its T5 conditioner loads ``t5-base`` when the model is built)::

    interventions run tada --model stabilityai/stable-audio-open-1.0 --backend stable-audio-tools \\
        --device cuda --concept tempo --values slow fast --prompt "a {value} piano piece" \\
        --prompt "{value} jazz with drums" --prompt "a {value} guitar song" \\
        --keep "instrument=piano,guitar,drums" --steps 100 --guidance 7 --n 32 --seconds 10

Not run here (no weights on these machines); ``tests/test_tada_sat.py`` runs this code path on a
tiny stable-audio-tools DiT built from a config by ``create_model_from_config``.

Example::

    model = SatModel(["a {value} piano piece"], {"tempo": ("slow", "fast")}, judge, sat_model, sample_size=16)
    loc = localize(model, "tempo", ("fast", "slow"), n=4, steps=8)  # rows: the DiT's layers
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from .pipeline import TemplateModel

__all__ = ["SatModel", "load_sat_model", "SAO_SAMPLER"]

#: Stable Audio Open's sampler settings (its model card's example)
SAO_SAMPLER = {"sampler_type": "dpmpp-3m-sde", "sigma_min": 0.3, "sigma_max": 500.0}


def _layers_path(model: torch.nn.Module) -> str:
    for name, module in model.named_modules():
        if type(module).__name__ == "DiffusionTransformer":
            return f"{name}.transformer.layers" if name else "transformer.layers"
    raise ValueError(
        f"{type(model).__name__} holds no stable-audio-tools DiffusionTransformer: TADA's stable-audio-tools "
        "path needs a diffusion_cond model with a DiT (model type 'dit' in its config)"
    )


@dataclass
class SatModel(TemplateModel):
    """A stable-audio-tools ``diffusion_cond`` DiT as a TADA model: ``model`` (the
    ``ConditionedDiffusionModelWrapper``, what ``attach`` hooks), ``sample_size`` (audio samples
    per generation, the config's), ``seconds`` (the ``seconds_total`` conditioning; the audio is
    cut there), ``sampler`` (keyword arguments of ``generate_diffusion_cond``)."""

    model: Any
    sample_size: int
    seconds: float | None = None
    sampler: dict[str, Any] = field(default_factory=dict)
    cfg: ClassVar[tuple[str, ...] | None] = None  # the adapter knows the [cond, uncond] layout

    def __post_init__(self) -> None:
        super().__post_init__()
        self._layers = _layers_path(self.model)
        layers = self.model.get_submodule(self._layers)
        missing = [i for i, layer in enumerate(layers) if not hasattr(layer, "cross_attn")]
        if missing:
            raise ValueError(f"DiT layers {missing} have no cross-attention (cross_attend=False): nothing to localise")
        self._count = len(layers)

    @property
    def transformer(self) -> torch.nn.Module:
        return self.model

    @property
    def sampling_rate(self) -> int:
        return int(self.model.sample_rate)

    def block_count(self) -> int:
        return self._count

    def cross_attn_inputs(self, layer: int) -> str:
        return f"{self._layers}.{layer}.cross_attn:input.context"

    def cross_attn_output(self, layer: int) -> str:
        return f"{self._layers}.{layer}.cross_attn"

    @torch.no_grad()
    def sample_prompts(self, prompts: list[str], seed: int, *, steps: int, guidance: float) -> torch.Tensor:
        """``generate_diffusion_cond`` for ``prompts`` from the noise of ``seed`` (the caller's
        global RNG is left as it was; the sampler's progress bar and seed print are silenced)."""
        from stable_audio_tools.inference.generation import generate_diffusion_cond

        seconds = self.seconds if self.seconds is not None else self.sample_size / self.sampling_rate
        cond = [{"prompt": p, "seconds_start": 0.0, "seconds_total": seconds} for p in prompts]
        default = SAO_SAMPLER if self.model.diffusion_objective == "v" else {"sampler_type": "euler"}
        device = next(self.model.parameters()).device
        sink = io.StringIO()
        with (
            torch.random.fork_rng(devices=[]),
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
            warnings.catch_warnings(),
        ):
            warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)  # torchsde rounding
            audio = generate_diffusion_cond(
                self.model,
                steps=steps,
                cfg_scale=guidance,
                conditioning=cond,
                batch_size=len(prompts),
                sample_size=self.sample_size,
                seed=seed,
                device=str(device),
                **{**default, **self.sampler},
            )
        if self.seconds is not None and self.model.pretransform is not None:
            audio = audio[..., : math.ceil(self.seconds * self.sampling_rate)]
        return audio


def load_sat_model(name: str, device: str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """A stable-audio-tools model and its config from a folder or a Hub repo holding
    ``model_config.json`` and ``model.safetensors`` (never a pickled ``.ckpt``), built by
    stable-audio-tools' own ``create_model_from_config``; eval mode, no gradients."""
    from interventions.adapters.sat_import import import_stable_audio_tools

    folder = Path(name)
    if folder.is_dir():
        config_path, weights = folder / "model_config.json", folder / "model.safetensors"
        missing = [p.name for p in (config_path, weights) if not p.exists()]
        if missing:
            raise FileNotFoundError(
                f"{folder} lacks {' and '.join(missing)}: a stable-audio-tools checkpoint folder holds "
                "model_config.json and model.safetensors (convert a .ckpt with safetensors.torch.save_file)"
            )
    else:
        from huggingface_hub import hf_hub_download

        config_path = Path(hf_hub_download(name, "model_config.json"))
        weights = Path(hf_hub_download(name, "model.safetensors"))
    config = json.loads(config_path.read_text())
    import_stable_audio_tools()
    from safetensors.torch import load_file
    from stable_audio_tools.models.factory import create_model_from_config

    model = create_model_from_config(config)
    model.load_state_dict(load_file(weights))
    return model.to(device).eval().requires_grad_(False), config
