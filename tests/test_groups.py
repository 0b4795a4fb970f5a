"""Named groups (``@blocks``, ``@self_attn``, ``@cross_attn``, ``@attn``, ``@mlp``) on every
supported family, built from tiny configs with the real classes: each group entry is the site of
the module's hidden-state tensor (``...attn:output.0`` where the module returns a tuple), every
entry fires in a forward, and a Cache on the group records tensors of the hidden-state shape.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch

from interventions import Cache, attach
from interventions.adapters import detect
from interventions.sites import Site, SiteNotFoundError
from tests import sat_support, tiny_models

Run = Callable[[], object]


def _seeded(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build().eval()


def gpt2() -> tuple[torch.nn.Module, Run]:
    m, _ = tiny_models.gpt2_lm()
    return m, lambda: m(torch.tensor([[5, 6, 7]]))


def llama() -> tuple[torch.nn.Module, Run]:
    m, _ = tiny_models.llama_lm()
    return m, lambda: m(torch.tensor([[2, 6, 7]]))


def bert() -> tuple[torch.nn.Module, Run]:
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    m = _seeded(lambda: BertForMaskedLM(cfg))
    return m, lambda: m(torch.tensor([[1, 5, 6, 2]]))


def t5() -> tuple[torch.nn.Module, Run]:
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(
        vocab_size=50,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        relative_attention_num_buckets=8,
    )
    m = _seeded(lambda: T5ForConditionalGeneration(cfg))
    return m, lambda: m(input_ids=torch.tensor([[5, 6, 7, 1]]), decoder_input_ids=torch.tensor([[0, 5, 6]]))


def umt5() -> tuple[torch.nn.Module, Run]:
    # no return annotations: its attention returns (hidden, weights) like all transformers
    # attention, its layers (unlike T5's) the tensor
    from transformers import UMT5Config, UMT5ForConditionalGeneration

    cfg = UMT5Config(
        vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4, relative_attention_num_buckets=8
    )
    m = _seeded(lambda: UMT5ForConditionalGeneration(cfg))
    return m, lambda: m(input_ids=torch.tensor([[1, 2, 3]]), decoder_input_ids=torch.tensor([[0, 1]]))


def whisper() -> tuple[torch.nn.Module, Run]:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig(
        vocab_size=60,
        num_mel_bins=8,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        d_model=16,
        max_source_positions=8,
        max_target_positions=16,
        decoder_start_token_id=1,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        suppress_tokens=None,
        begin_suppress_tokens=None,
    )
    m = _seeded(lambda: WhisperForConditionalGeneration(cfg))
    mel = torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(0))
    return m, lambda: m(input_features=mel, decoder_input_ids=torch.tensor([[1, 5, 6]]))


def clip() -> tuple[torch.nn.Module, Run]:
    from transformers import CLIPConfig, CLIPModel

    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    cfg = CLIPConfig(
        text_config=dict(tower, vocab_size=50, max_position_embeddings=16, bos_token_id=0, eos_token_id=2),
        vision_config=dict(tower, image_size=16, patch_size=8),
        projection_dim=16,
    )
    m = _seeded(lambda: CLIPModel(cfg))
    return m, lambda: m(input_ids=torch.tensor([[0, 5, 6, 2]]), pixel_values=torch.zeros(1, 3, 16, 16))


def vit() -> tuple[torch.nn.Module, Run]:
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=16, patch_size=8
    )
    m = _seeded(lambda: ViTModel(cfg))
    return m, lambda: m(pixel_values=torch.zeros(1, 3, 16, 16))


def mamba() -> tuple[torch.nn.Module, Run]:
    from transformers import MambaConfig, MambaForCausalLM

    cfg = MambaConfig(vocab_size=50, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2, conv_kernel=2)
    m = _seeded(lambda: MambaForCausalLM(cfg))
    return m, lambda: m(torch.tensor([[1, 2, 3]]))


def unet() -> tuple[torch.nn.Module, Run]:
    m = _seeded(tiny_models.sd_unet)
    return m, lambda: m(torch.zeros(1, 4, 8, 8), 10, encoder_hidden_states=torch.zeros(1, 5, 32))


def sd3() -> tuple[torch.nn.Module, Run]:
    from diffusers import SD3Transformer2DModel

    m = _seeded(
        lambda: SD3Transformer2DModel(
            sample_size=8,
            patch_size=2,
            in_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=32,
            caption_projection_dim=32,
            pooled_projection_dim=16,
            out_channels=4,
            pos_embed_max_size=16,
            dual_attention_layers=(0,),  # SD3.5: block 0 also has a self-attention ``attn2``
        )
    )
    return m, lambda: m(
        torch.zeros(1, 4, 8, 8),
        encoder_hidden_states=torch.zeros(1, 5, 32),
        pooled_projections=torch.zeros(1, 16),
        timestep=torch.tensor([10]),
    )


def flux() -> tuple[torch.nn.Module, Run]:
    from diffusers import FluxTransformer2DModel

    m = _seeded(
        lambda: FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            axes_dims_rope=(4, 4, 8),
        )
    )
    return m, lambda: m(
        torch.zeros(1, 16, 16),
        encoder_hidden_states=torch.zeros(1, 5, 32),
        pooled_projections=torch.zeros(1, 32),
        timestep=torch.tensor([0.5]),
        img_ids=torch.zeros(16, 3),
        txt_ids=torch.zeros(5, 3),
    )


def wan() -> tuple[torch.nn.Module, Run]:
    m = _seeded(tiny_models.wan_transformer)
    return m, lambda: m(torch.zeros(1, 4, 2, 8, 8), torch.tensor([10]), torch.zeros(1, 5, 32))


def pixart() -> tuple[torch.nn.Module, Run]:
    from diffusers import PixArtTransformer2DModel

    m = _seeded(
        lambda: PixArtTransformer2DModel(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=4,
            out_channels=8,
            num_layers=2,
            cross_attention_dim=16,
            sample_size=8,
            patch_size=2,
            caption_channels=32,
            norm_num_groups=4,
        )
    )
    cond = {"resolution": None, "aspect_ratio": None}
    return m, lambda: m(
        torch.zeros(1, 4, 8, 8),
        encoder_hidden_states=torch.zeros(1, 5, 32),
        timestep=torch.tensor([10]),
        added_cond_kwargs=cond,
    )


def stable_audio() -> tuple[torch.nn.Module, Run]:
    from diffusers import StableAudioDiTModel
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    m = _seeded(
        lambda: StableAudioDiTModel(
            sample_size=8,
            in_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            num_key_value_attention_heads=2,
            out_channels=4,
            cross_attention_dim=16,
            time_proj_dim=16,
            global_states_input_dim=32,
            cross_attention_input_dim=16,
        )
    )
    rotary = get_1d_rotary_pos_embed(4, 8 + 1, use_real=True, repeat_interleave_real=False)  # 8 frames + 1 global
    return m, lambda: m(
        torch.zeros(1, 4, 8),
        torch.tensor([0.5]),
        encoder_hidden_states=torch.zeros(1, 3, 16),
        global_hidden_states=torch.zeros(1, 1, 32),
        rotary_embedding=rotary,
    )


# family -> (builder, {group: (number of sites, set of recorded shapes)}, entries that must be there)
FAMILIES: dict[str, tuple[Callable[[], tuple[torch.nn.Module, Run]], dict[str, tuple[int, set]], list[str]]] = {
    "gpt2": (
        gpt2,
        {g: (2, {(1, 3, 64)}) for g in ("blocks", "self_attn", "attn", "mlp")},
        ["transformer.h.0", "transformer.h.1.attn:output.0", "transformer.h.0.mlp"],
    ),
    "llama": (
        llama,
        {g: (2, {(1, 3, 64)}) for g in ("blocks", "self_attn", "attn", "mlp")},
        ["model.layers.0", "model.layers.1.self_attn:output.0", "model.layers.1.mlp"],
    ),
    "bert": (
        bert,
        {g: (2, {(1, 4, 32)}) for g in ("blocks", "self_attn", "attn", "mlp")},
        ["bert.encoder.layer.0.attention:output.0", "bert.encoder.layer.1.output"],
    ),
    "t5": (
        t5,
        {
            "blocks": (4, {(1, 4, 32), (1, 3, 32)}),  # encoder (4 tokens) and decoder (3 tokens)
            "self_attn": (4, {(1, 4, 32), (1, 3, 32)}),
            "cross_attn": (2, {(1, 3, 32)}),
            "attn": (6, {(1, 4, 32), (1, 3, 32)}),
            "mlp": (4, {(1, 4, 32), (1, 3, 32)}),
        },
        [
            "encoder.block.1:output.0",
            "decoder.block.0.layer.0.SelfAttention:output.0",
            "decoder.block.1.layer.1.EncDecAttention:output.0",
            "decoder.block.1.layer.2.DenseReluDense",
        ],
    ),
    "umt5": (
        umt5,
        {
            "blocks": (2, {(1, 3, 16), (1, 2, 16)}),
            "self_attn": (2, {(1, 3, 16), (1, 2, 16)}),
            "cross_attn": (1, {(1, 2, 16)}),
            "attn": (3, {(1, 3, 16), (1, 2, 16)}),
            "mlp": (2, {(1, 3, 16), (1, 2, 16)}),
        },
        ["encoder.block.0", "decoder.block.0.layer.1.EncDecAttention:output.0"],
    ),
    "whisper": (
        whisper,
        {
            "blocks": (4, {(1, 8, 16), (1, 3, 16)}),
            "self_attn": (4, {(1, 8, 16), (1, 3, 16)}),
            "cross_attn": (2, {(1, 3, 16)}),
            "attn": (6, {(1, 8, 16), (1, 3, 16)}),
            "mlp": (4, {(1, 8, 16), (1, 3, 16)}),
        },
        ["model.encoder.layers.0", "model.decoder.layers.1.encoder_attn:output.0", "model.decoder.layers.0.fc2"],
    ),
    "clip": (
        clip,
        {g: (4, {(1, 4, 32), (1, 5, 32)}) for g in ("blocks", "self_attn", "attn", "mlp")},  # text and vision
        ["text_model.encoder.layers.1.self_attn:output.0", "vision_model.encoder.layers.0.self_attn:output.0"],
    ),
    "vit": (
        vit,
        {g: (2, {(1, 5, 32)}) for g in ("blocks", "self_attn", "attn", "mlp")},
        ["layers.0.attention:output.0", "layers.1.mlp"],
    ),
    "mamba": (mamba, {"blocks": (2, {(1, 3, 16)})}, ["backbone.layers.0"]),  # no attention: its layer list
    "unet": (
        unet,
        {
            "blocks": (5, {(1, 8, 4, 4), (1, 16, 4, 4), (1, 16, 8, 8), (1, 8, 8, 8)}),
            "self_attn": (4, {(1, 64, 8), (1, 16, 16)}),
            "cross_attn": (4, {(1, 64, 8), (1, 16, 16)}),
            "attn": (8, {(1, 64, 8), (1, 16, 16)}),
            "mlp": (4, {(1, 64, 8), (1, 16, 16)}),
        },
        ["down_blocks.0:output.0", "down_blocks.1:output.0", "mid_block", "up_blocks.1"],
    ),
    "sd3": (
        sd3,
        {g: (n, {(1, 16, 32)}) for g, n in (("blocks", 2), ("self_attn", 3), ("attn", 3), ("mlp", 2))},
        ["transformer_blocks.0:output.1", "transformer_blocks.1.attn:output.0", "transformer_blocks.0.attn2"],
    ),
    "flux": (
        flux,
        {
            "blocks": (2, {(1, 16, 32)}),
            "self_attn": (2, {(1, 16, 32), (1, 21, 32)}),  # a single-stream block attends over text + image
            "attn": (2, {(1, 16, 32), (1, 21, 32)}),
            "mlp": (1, {(1, 16, 32)}),
        },
        ["transformer_blocks.0:output.1", "single_transformer_blocks.0:output.1", "transformer_blocks.0.attn:output.0"],
    ),
    "wan": (
        wan,
        {
            g: (n, {(1, 32, 16)})
            for g, n in (("blocks", 2), ("self_attn", 2), ("cross_attn", 2), ("attn", 4), ("mlp", 2))
        },
        ["blocks.0", "blocks.1.attn1", "blocks.1.attn2", "blocks.0.ffn"],
    ),
    "pixart": (
        pixart,
        {
            g: (n, {(1, 16, 16)})
            for g, n in (("blocks", 2), ("self_attn", 2), ("cross_attn", 2), ("attn", 4), ("mlp", 2))
        },
        ["transformer_blocks.0", "transformer_blocks.1.attn2"],
    ),
    "stable_audio": (
        stable_audio,
        {
            g: (n, {(1, 9, 32)})
            for g, n in (("blocks", 2), ("self_attn", 2), ("cross_attn", 2), ("attn", 4), ("mlp", 2))
        },
        ["transformer_blocks.0", "transformer_blocks.1.attn2"],
    ),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    build, expected, entries = FAMILIES[request.param]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny configs: transformers warns about token ids
        model, run = build()
    return model, run, expected, entries


def test_every_group_fires_with_the_hidden_state(family):
    model, run, expected, entries = family
    groups = detect(model).groups()
    assert {g: len(sites) for g, sites in groups.items()} == {g: n for g, (n, _) in expected.items()}
    assert set(entries) <= {s for sites in groups.values() for s in sites}
    for group, (_, shapes) in expected.items():
        cache = Cache()
        with torch.no_grad(), attach(model, {f"@{group}": cache}) as session:
            run()
        assert sorted(session.fired) == sorted(groups[group])
        assert min(session.fired.values()) == 1
        assert {tuple(cache[s].shape) for s in groups[group]} == shapes


def test_group_entries_are_concrete_sites_computed_once():
    # a 24-layer GPT-2: the group is read once per attach and each entry is a literal site, so the
    # session never builds the table of every module path (a glob would)
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=24, n_embd=32, n_head=2, vocab_size=64, n_positions=16))
    session = attach(model, {"@blocks": Cache(), "@self_attn": Cache(), "@mlp": Cache()})
    session.remove()
    groups = session.adapter.groups()
    assert groups is session.adapter.groups()
    assert groups["self_attn"][23] == "transformer.h.23.attn:output.0"
    assert not any(Site.parse(s).is_glob for sites in groups.values() for s in sites)
    assert session.tree._paths is None
    assert len(session.entries) == 72


def test_a_group_with_a_suffix_takes_the_modules_own_direction_and_key():
    model, _ = tiny_models.gpt2_lm()
    cache = Cache()
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad(), attach(model, {"@self_attn:input.0": cache, "transformer.h.1.ln_1": cache}) as session:
        model(ids)
    assert sorted(session.fired) == [
        "transformer.h.0.attn:input.0",
        "transformer.h.1.attn:input.0",
        "transformer.h.1.ln_1",
    ]
    assert torch.equal(cache["transformer.h.1.attn:input.0"], cache["transformer.h.1.ln_1"])


def test_blocks_on_a_unet_pipeline_need_no_fix():
    # ``@blocks`` on a UNet pipeline: the down blocks return (hidden, res_samples), the mid and up
    # blocks a tensor; every entry is a feature map of the block's channels
    pipe = tiny_models.sd_pipeline()
    cache = Cache()
    with attach(pipe, {"@blocks": cache}) as session:
        pipe(["a red circle"], num_inference_steps=2, guidance_scale=3.0, output_type="pt")
    assert sorted(session.fired) == [
        "unet.down_blocks.0:output.0",
        "unet.down_blocks.1:output.0",
        "unet.mid_block",
        "unet.up_blocks.0",
        "unet.up_blocks.1",
    ]
    assert set(session.fired.values()) == {2}
    shapes = {site: tuple(cache.get(site, 1, "cond").shape) for site in session.fired}
    assert shapes == {
        "unet.down_blocks.0:output.0": (1, 8, 4, 4),
        "unet.down_blocks.1:output.0": (1, 16, 4, 4),
        "unet.mid_block": (1, 16, 4, 4),
        "unet.up_blocks.0": (1, 16, 8, 8),
        "unet.up_blocks.1": (1, 8, 8, 8),
    }


def test_sd3_pipeline_groups_split_by_cfg_branch():
    # joint attention and blocks inside a pipeline: each branch's rows of the image stream
    pipe = tiny_models.sd3_pipeline()
    cache = Cache()
    with attach(pipe, {"@blocks": cache, "@attn": cache, "@mlp": cache}) as session:
        pipe(["a red circle"], num_inference_steps=2, guidance_scale=3.0, output_type="pt")
    pre = "transformer.transformer_blocks"
    assert session.fired == {
        f"{pre}.0:output.1": 2,
        f"{pre}.1:output.1": 2,
        f"{pre}.0.attn:output.0": 2,
        f"{pre}.1.attn:output.0": 2,
        f"{pre}.0.ff": 2,
        f"{pre}.1.ff": 2,
    }
    for site in session.fired:
        for branch in ("uncond", "cond"):
            assert cache.get(site, 1, branch).shape == (1, 16, 32)


@pytest.mark.skipif(not sat_support.sat_available(), reason="stable-audio-tools not installed")
def test_stable_audio_tools_dit_groups():
    sat_support.import_stable_audio_tools()
    model = sat_support.build_tiny_sat_model(seed=0)
    groups = detect(model).groups()
    pre = "model.model.transformer.layers"
    assert groups == {
        "blocks": [f"{pre}.0", f"{pre}.1"],
        "self_attn": [f"{pre}.0.self_attn", f"{pre}.1.self_attn"],
        "cross_attn": [f"{pre}.0.cross_attn", f"{pre}.1.cross_attn"],
        "attn": [f"{pre}.0.self_attn", f"{pre}.0.cross_attn", f"{pre}.1.self_attn", f"{pre}.1.cross_attn"],
        "mlp": [f"{pre}.0.ff", f"{pre}.1.ff"],
    }
    cache = Cache()
    with attach(model, {"@blocks": cache, "@attn": cache, "@mlp": cache}) as session:
        sat_support.generate(model, steps=2, cfg_scale=3.0, seed=0)
    assert min(session.fired.values()) == 2
    assert {tuple(cache.get(s, 0, "cond").shape) for s in session.fired} == {(1, 17, 64)}


def test_groups_span_every_expert_of_a_two_denoiser_pipeline():
    # Wan 2.2 runs `transformer` above its boundary and `transformer_2` below: a group naming only the
    # first expert's layers would leave the last steps unhooked without a word
    pipe = tiny_models.wan22_pipeline()
    cache = Cache()
    with attach(pipe, {"@cross_attn": cache}):
        tiny_models.run_wan22(pipe)
    steps = {}
    for site, step, _ in cache.keys():
        steps.setdefault(site, set()).add(step)
    assert steps == {
        "transformer.blocks.0.attn2": {0, 1, 2},
        "transformer.blocks.1.attn2": {0, 1, 2},
        "transformer_2.blocks.0.attn2": {3},
        "transformer_2.blocks.1.attn2": {3},
    }
    only_second = Cache()
    with attach(pipe, {"@transformer_2.cross_attn": only_second}):
        tiny_models.run_wan22(pipe)
    assert {k[0] for k in only_second.keys()} == {"transformer_2.blocks.0.attn2", "transformer_2.blocks.1.attn2"}


def test_a_controlnet_has_its_own_groups_and_the_plain_ones_stay_the_unets():
    pipe = tiny_models.controlnet_pipeline()
    groups = detect(pipe).groups()
    assert all(s.startswith("unet.") for s in groups["cross_attn"])
    assert groups["cross_attn"] == groups["unet.cross_attn"]
    assert groups["controlnet.cross_attn"] and all(s.startswith("controlnet.") for s in groups["controlnet.cross_attn"])
    with pytest.raises(SiteNotFoundError, match="controlnet.cross_attn"):
        attach(pipe, {"@controlnet.crossattn": Cache()})
