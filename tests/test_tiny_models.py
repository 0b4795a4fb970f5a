"""Smoke tests for tests/tiny_models.py: every builder runs once, offline, with guidance > 1,
and the CFG layout each family shows a hook on its denoiser is pinned down."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from tests import tiny_models as tm  # noqa: E402


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _Recorder:
    """Forward pre-hook (with kwargs) on a denoiser: records batch size, timestep, kwargs."""

    def __init__(self, module: torch.nn.Module):
        self.calls: list[dict] = []
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        t = kwargs["timestep"] if "timestep" in kwargs else args[1]
        self.calls.append(
            dict(
                n_args=len(args),
                batch=x.shape[0],
                timestep=t.detach().clone(),
                ehs=kwargs.get("encoder_hidden_states"),
                class_labels=kwargs.get("class_labels"),
            )
        )

    def remove(self):
        self.handle.remove()


def _all_eval_f32(pipe) -> None:
    mods = (
        [pipe]
        if isinstance(pipe, torch.nn.Module)
        else [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    )
    for m in mods:
        assert not any(s.training for s in m.modules()), type(m).__name__
        assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in m.parameters())


def _names(module: torch.nn.Module) -> set[str]:
    return {n for n, _ in module.named_modules()}


def test_builders_do_not_touch_global_rng_and_are_seeded():
    state = torch.get_rng_state()
    a, b, c = tm.sd_pipeline(), tm.sd_pipeline(), tm.sd_pipeline(seed=1)
    assert torch.equal(state, torch.get_rng_state())
    sa, sb, sc = (p.unet.state_dict() for p in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.unet is not b.unet  # fresh objects every call


def test_tokenizers_offline():
    tok = tm.clip_tokenizer()
    ids = tok(
        ["a red circle"], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    assert ids.shape == (1, tm.CLIP_MAX_LEN)
    assert ids[0, 0] == tm.CLIP_BOS and ids[0, 4] == tm.CLIP_EOS and ids[0, 5] == tm.CLIP_PAD
    assert tm.CLIP_UNK not in ids[0, :5].tolist()
    t5 = tm.t5_tokenizer()
    assert t5("a tone").input_ids[-1] == t5.eos_token_id == 1
    assert t5("zebraquux").input_ids[0] == t5.unk_token_id  # unknown words -> unk, never an error


def test_sd_pipeline_cfg_uncond_cond():
    pipe = tm.sd_pipeline()
    _all_eval_f32(pipe)
    names = _names(pipe.unet)
    for site in (
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2",
        "mid_block.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn1",
    ):
        assert site in names
    rec = _Recorder(pipe.unet)
    out = pipe(
        ["a red circle"],
        negative_prompt=["blurry"],
        num_inference_steps=3,
        guidance_scale=3.0,
        generator=_gen(),
        output_type="pt",
    ).images
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()
    assert [c["batch"] for c in rec.calls] == [2, 2, 2]
    assert rec.calls[0]["n_args"] == 2 and rec.calls[0]["timestep"].ndim == 0  # unet(x, t, ...)
    cond, uncond = pipe.encode_prompt("a red circle", "cpu", 1, True, "blurry")
    ehs = rec.calls[0]["ehs"]
    assert torch.allclose(ehs[0], uncond[0]) and torch.allclose(ehs[1], cond[0])


@pytest.mark.filterwarnings("ignore:Should have:UserWarning")  # torchsde BrownianInterval, benign
def test_stable_audio_pipeline_cfg_uncond_cond():
    pytest.importorskip("torchsde")
    pipe = tm.stable_audio_pipeline()
    _all_eval_f32(pipe)
    assert "transformer_blocks.1.attn2" in _names(pipe.transformer)
    rec = _Recorder(pipe.transformer)
    audio = pipe("a tone", num_inference_steps=3, guidance_scale=3.0, audio_end_in_s=1.0, generator=_gen()).audios
    assert audio.shape == (1, 2, 8) and torch.isfinite(audio).all()  # stereo, 1 s at 8 Hz
    assert [c["batch"] for c in rec.calls] == [2, 2, 2]
    # no negative prompt: the uncond half is all-zero text+duration embeddings, put first
    ehs = rec.calls[0]["ehs"]
    assert ehs[0].abs().sum() == 0 and ehs[1].abs().sum() > 0


def test_sd3_pipeline_cfg_kwargs_only():
    pipe = tm.sd3_pipeline()
    _all_eval_f32(pipe)
    assert {"transformer_blocks.0.attn", "transformer_blocks.1.attn"} <= _names(pipe.transformer)
    rec = _Recorder(pipe.transformer)
    out = pipe(["a red circle"], num_inference_steps=3, guidance_scale=3.0, generator=_gen(), output_type="pt").images
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()
    assert [c["batch"] for c in rec.calls] == [2, 2, 2]
    assert all(c["n_args"] == 0 for c in rec.calls)  # kwargs only
    assert rec.calls[0]["timestep"].shape == (2,)
    cond, uncond = pipe.encode_prompt("a red circle", None, None, device="cpu")[:2]
    ehs = rec.calls[0]["ehs"]
    assert torch.allclose(ehs[0], uncond[0]) and torch.allclose(ehs[1], cond[0])  # [uncond, cond]


@pytest.mark.parametrize("guidance_embeds", [False, True])
def test_flux_pipeline_true_cfg_is_two_sequential_passes(guidance_embeds):
    pipe = tm.flux_pipeline(guidance_embeds=guidance_embeds)
    _all_eval_f32(pipe)
    assert {"transformer_blocks.0.attn", "single_transformer_blocks.0.attn"} <= _names(pipe.transformer)
    rec = _Recorder(pipe.transformer)
    out = pipe(
        "a red circle",
        negative_prompt="blurry",
        true_cfg_scale=3.0,
        num_inference_steps=3,
        max_sequence_length=16,
        generator=_gen(),
        output_type="pt",
    ).images
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()
    assert [c["batch"] for c in rec.calls] == [1] * 6
    assert all(c["n_args"] == 0 for c in rec.calls)
    pos = pipe.encode_prompt("a red circle", None, max_sequence_length=16)[0]
    neg = pipe.encode_prompt("blurry", None, max_sequence_length=16)[0]
    assert torch.allclose(rec.calls[0]["ehs"], pos) and torch.allclose(rec.calls[1]["ehs"], neg)
    rec.calls.clear()
    pipe("a red circle", num_inference_steps=3, max_sequence_length=16, generator=_gen(), output_type="pt")
    assert len(rec.calls) == 3


def test_dit_pipeline_cfg_cond_uncond():
    pipe = tm.dit_pipeline()
    _all_eval_f32(pipe)
    assert "transformer_blocks.1.attn1" in _names(pipe.transformer)
    rec = _Recorder(pipe.transformer)
    out = pipe(
        class_labels=[1, 2], num_inference_steps=3, guidance_scale=3.0, generator=_gen(), output_type="np"
    ).images
    assert out.shape == (2, 16, 16, 3) and np.isfinite(out).all()
    assert [c["batch"] for c in rec.calls] == [4, 4, 4]
    assert rec.calls[0]["class_labels"].tolist() == [1, 2, 1000, 1000]  # [cond, uncond]
    assert rec.calls[0]["timestep"].shape == (4,)


def test_ddpm_pipeline():
    pipe = tm.ddpm_pipeline()
    _all_eval_f32(pipe)
    assert {"down_blocks.1.attentions.0", "mid_block.attentions.0"} <= _names(pipe.unet)
    rec = _Recorder(pipe.unet)
    out = pipe(num_inference_steps=3, generator=_gen(), output_type="np").images
    assert out.shape == (1, 8, 8, 3) and np.isfinite(out).all()
    assert [c["batch"] for c in rec.calls] == [1, 1, 1]


@pytest.mark.parametrize("builder", [tm.gpt2_lm, tm.llama_lm])
def test_causal_lms(builder):
    model, tok = builder()
    _all_eval_f32(model)
    enc = tok(["a red circle", "the cat"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**enc).logits
        gen = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert logits.shape[:2] == enc.input_ids.shape and logits.shape[-1] == len(tok)
    assert gen.shape == (2, enc.input_ids.shape[1] + 3)
    assert isinstance(tok.decode(gen[0]), str)
