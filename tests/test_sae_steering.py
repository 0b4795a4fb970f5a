"""SAEs, SAEEdit on a real SAE, feature scores and steering vectors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from interventions import Cache, DiskStore, ShapeMismatchError, SiteNotFoundError, When, attach
from interventions.sae import SAE, SAEInfo, clamp, scale, zero
from interventions.sae_train import TrainConfig, train_sae
from interventions.scores import cohens_d, difference_of_means, normalized_difference, tfidf, top_features
from interventions.steering import SteeringVector, directions_from_features
from interventions.testing import activations, assert_identity, assert_no_hooks_left, module_paths, module_trees
from tests import tiny_models


@settings(max_examples=30, deadline=None)
@given(module_trees(width=8), st.sampled_from(["topk", "batchtopk", "relu", "jumprelu"]), st.integers(0, 99), st.data())
def test_sae_edit_without_edit_is_identity_for_every_kind(model, kind, seed, data):
    sae = SAE(8, 24, kind, k=4, seed=seed)
    x = data.draw(activations((3, 8)))
    site = data.draw(st.sampled_from(module_paths(model)))
    assert_identity(model, {site: sae.edit()}, x)
    assert_identity(model, {site: sae.edit(lambda z, ctx: z)}, x)
    assert_identity(model, {site: sae.edit(lambda p, ctx: p, stage="pre")}, x)


def test_topk_and_batchtopk_sparsity():
    sae = SAE(8, 32, "batchtopk", k=4)
    pre = torch.randn(10, 32)
    batch = sae.activate(pre, batch_topk=True)
    assert (batch != 0).sum() <= 40 and (batch != 0).sum(-1).max() > 4  # k per token on average only
    assert (sae.activate(pre) != 0).sum(-1).max() <= 4  # per-token top-k at inference


@pytest.fixture(scope="module")
def diffusion_store(tmp_path_factory):
    """Mid-block activations of a tiny SD pipeline: 12 prompts x 6 steps x 2 branches, on disk."""
    pipe = tiny_models.sd_pipeline()
    store = DiskStore(tmp_path_factory.mktemp("acts"), buffer_bytes=64 << 10)
    words = ["red", "blue", "green", "circle", "square", "star"]
    with attach(pipe, {"unet.mid_block": Cache(store, on_repeat="append")}):
        for i in range(12):
            pipe(
                f"a {words[i % 6]} {words[(i + 2) % 6]}",
                num_inference_steps=6,
                guidance_scale=3.0,
                generator=torch.Generator().manual_seed(i),
                output_type="pt",
            )
    store.flush()
    assert len(store.keys()) == 6 * 2 and all(len(list(store.parts(k))) == 12 for k in store.keys())
    return store


def test_sae_on_cached_diffusion_activations_reaches_low_fvu(diffusion_store):
    cfg = TrainConfig(steps=600, batch_size=128, lr=3e-3, eval_tokens=1024, shuffle_tokens=4096, progress=False)
    sae, report = train_sae(
        diffusion_store, d_sae=64, kind="topk", k=8, layout="BCHW", site="unet.mid_block", config=cfg
    )
    # measured: FVU 0.074 at L0 8 on held-out tokens (12 prompts); issue 3 asks for FVU < 0.1 at L0 <= 32
    assert report.l0 <= 32 and report.fvu < 0.1, report
    assert report.tokens_seen == 600 * 128
    assert sae.info.site == "unet.mid_block" and sae.info.layout == "BCHW"


def test_sae_attach_edits_its_site_and_refuses_other_widths(diffusion_store):
    pipe = tiny_models.sd_pipeline()
    sae = SAE(16, 32, "topk", k=4, info=SAEInfo(site="unet.mid_block", layout="BCHW"))
    run = dict(prompt="a red circle", num_inference_steps=3, guidance_scale=3.0, output_type="pt")
    base = pipe(generator=torch.Generator().manual_seed(0), **run).images
    with sae.attach(pipe, edit=zero(range(32)), when=When(branch="cond")):
        edited = pipe(generator=torch.Generator().manual_seed(0), **run).images
    assert not torch.equal(base, edited)
    wrong = SAE(24, 32, "topk", k=4, info=SAEInfo(site="unet.mid_block", layout="BCHW"))
    with pytest.raises(ShapeMismatchError, match="SAE for 'unet.mid_block'.*16 features.*expects 24"):
        with wrong.attach(pipe, edit=zero([0])):
            pipe(generator=torch.Generator().manual_seed(0), **run)
    missing = SAE(16, 32, "topk", k=4, info=SAEInfo(site="unet.mid_blok"))
    with pytest.raises(SiteNotFoundError, match="unet.mid_block"):
        missing.attach(pipe, edit=zero([0]))
    assert_no_hooks_left(pipe.unet)
    assert torch.equal(pipe(generator=torch.Generator().manual_seed(0), **run).images, base)


def test_edit_helpers():
    z = torch.ones(2, 5)
    assert scale([1], -2.0)(z, None)[:, 1].eq(-2).all()
    assert clamp([0, 4], 7.0)(z, None)[:, [0, 4]].eq(7).all()
    assert zero([2])(z, None)[:, 2].eq(0).all() and z.eq(1).all()  # edits never write in place


def test_caa_recovers_a_planted_direction():
    torch.manual_seed(0)
    d = 32
    planted = torch.randn(d)
    planted /= planted.norm()
    model = torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.Tanh())
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(d) + 0.01 * torch.randn(d, d))  # near-identity: the site sees ~the input
        model[0].bias.zero_()
    x = torch.randn(256, 10, d)
    x[:128] += 3.0 * planted  # half of the inputs carry the direction
    pos, neg = Cache(), Cache()
    with torch.no_grad():
        with attach(model, {"0": pos}):
            model(x[:128])
        with attach(model, {"0": neg}):
            model(x[128:])
    vector = SteeringVector.contrastive({"0": pos["0"]}, {"0": neg["0"]}, unit=True)
    cosine = float(vector.directions["0"] @ planted)
    assert cosine > 0.95, cosine
    pca = SteeringVector.pca({"0": pos["0"][:64]}, {"0": neg["0"][:64]})
    assert float(pca.directions["0"] @ planted) > 0.95


def test_contrastive_from_stores_per_step_and_apply_with_when():
    pipe = tiny_models.sd_pipeline()
    site = "unet.mid_block"
    pos, neg = Cache(), Cache()
    run = dict(num_inference_steps=3, guidance_scale=3.0, output_type="pt")
    with attach(pipe, {site: pos}):
        pipe("a red circle", generator=torch.Generator().manual_seed(0), **run)
    with attach(pipe, {site: neg}):
        pipe("a blue square", generator=torch.Generator().manual_seed(0), **run)
    vec = SteeringVector.contrastive(pos.store, neg.store, layout="BCHW", branch="cond", per_step=True, unit=True)
    assert sorted(vec.directions) == [(site, 0), (site, 1), (site, 2)]
    seen = Cache()
    with vec.attach(pipe, scale=5.0, restore_norm=True), attach(pipe, {site: seen}):
        pipe("a blue square", generator=torch.Generator().manual_seed(0), **run)
    assert torch.equal(seen.get(site, 0, "uncond"), neg.get(site, 0, "uncond"))
    assert not torch.equal(seen.get(site, 0, "cond"), neg.get(site, 0, "cond"))
    removed = Cache()
    with vec.attach(pipe, mode="remove"), attach(pipe, {site: removed}):
        pipe("a red circle", generator=torch.Generator().manual_seed(0), **run)
    v0 = vec.directions[(site, 0)]
    proj = torch.einsum("bchw,c->bhw", removed.get(site, 0, "cond"), v0)
    assert proj.max() <= 1e-4


def test_feature_scores_hand_computed():
    pos = torch.tensor([[2.0, 0.0, 1.0], [4.0, 0.0, 1.0]])
    neg = torch.tensor([[1.0, 1.0, 1.0], [1.0, 3.0, 1.0]])
    torch.testing.assert_close(difference_of_means(pos, neg), torch.tensor([2.0, -2.0, 0.0]))
    # p_c = [3,0,1]/4, p_o = [1,2,1]/4
    torch.testing.assert_close(normalized_difference(pos, neg), torch.tensor([0.5, -0.5, 0.0]))
    torch.testing.assert_close(
        tfidf(pos, neg), torch.tensor([3.0, 0.0, 1.0]) * torch.log1p(1 / (torch.tensor([1.0, 2.0, 1.0]) + 1e-6))
    )
    # pooled std: feature 0: var(pos)=2, var(neg)=0 -> pooled 1 -> d = 2; feature 1: var 0 and 2 -> d = -2
    torch.testing.assert_close(cohens_d(pos, neg)[:2], torch.tensor([2.0, -2.0]))
    assert top_features(difference_of_means(pos, neg), 1).tolist() == [0]
    w = torch.eye(3)
    torch.testing.assert_close(directions_from_features(w, [0, 2], [1.0, 2.0]), torch.tensor([1.0, 0.0, 2.0]))


def test_sae_and_vector_save_load_roundtrip(tmp_path):
    sae = SAE(
        8,
        16,
        "jumprelu",
        info=SAEInfo(site="blocks.0", layout="BNC", base_model="tiny/model", steps=[0, 2], branch="cond"),
    )
    sae.save(tmp_path / "sae")
    back = SAE.load(tmp_path / "sae")
    assert back.kind == "jumprelu" and back.info.steps == [0, 2] and back.info.branch == "cond"
    for n in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
        assert torch.equal(getattr(sae, n), getattr(back, n))
    vec = SteeringVector({"a.1": torch.randn(4), ("a", 3): torch.randn(4)}, base_model="m", branch="cond")
    vec.save(tmp_path / "vec")
    got = SteeringVector.load(tmp_path / "vec")
    assert set(got.directions) == set(vec.directions) and got.branch == "cond"
    assert all(torch.equal(got.directions[k], vec.directions[k]) for k in vec.directions)


def test_sae_edit_keeps_the_reconstruction_error():
    """The edited site is x + dec(z') - dec(z): what the SAE cannot reconstruct survives the edit."""
    model = torch.nn.Sequential(torch.nn.Linear(6, 8))
    sae = SAE(8, 16, "topk", k=4, seed=3)
    with torch.no_grad():
        sae.b_dec.normal_()
    x = torch.randn(5, 6)
    with attach(model, {"0": sae.edit(zero([0, 1, 2, 3, 4, 5, 6, 7]))}):
        edited = model(x)
    with torch.no_grad():
        h = model(x)
        z = sae.encode(h)
        z_edit = z.clone()
        z_edit[:, :8] = 0
        expected = h + sae.decode(z_edit) - sae.decode(z)
    assert (z[:, :8] != 0).any()  # the edit had latents to remove
    torch.testing.assert_close(edited, expected)


def test_uncentred_sae_loads_as_it_computes_and_foreign_settings_are_refused(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    from hub_cards import ArtifactError

    sae = SAE(8, 16, "jumprelu", info=SAEInfo(site="blocks.0", base_model="m"), apply_b_dec_to_input=False)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    sae.save(tmp_path / "sae")
    back = SAE.load(tmp_path / "sae")
    x = torch.randn(4, 8)
    pre = x @ sae.W_enc + sae.b_enc  # Gemma Scope's encoder: no b_dec subtracted
    assert not back.apply_b_dec_to_input
    torch.testing.assert_close(back.encode(x), torch.relu(pre) * (pre > sae.threshold))
    cfg_path = tmp_path / "sae" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    for key, value in [("normalize_activations", "expected_average_only_in"), ("reshape_activations", "hook_z")]:
        cfg_path.write_text(json.dumps({**cfg, key: value}))
        with pytest.raises(ArtifactError, match=f"{key}={value!r} \\(only 'none' is supported\\)"):
            SAE.load(tmp_path / "sae")
    cfg_path.write_text(json.dumps(cfg))
    weights = tmp_path / "sae" / "sae_weights.safetensors"
    save_file({**load_file(weights), "scaling_factor": torch.ones(16)}, weights)
    with pytest.raises(ArtifactError, match=r"tensors \['scaling_factor'\] that this SAE would ignore"):
        SAE.load(tmp_path / "sae")


def test_scores_and_directions_edge_cases():
    pos, neg = torch.tensor([[5.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    d = cohens_d(pos, neg)  # one positive example: its squares are 0, pooled over 1 degree of freedom
    torch.testing.assert_close(d[[0, 2]], torch.tensor([4.0, -1.0]) / 2**0.5)
    assert torch.isfinite(d).all()
    with pytest.raises(ValueError, match="got 1 and 1"):
        cohens_d(pos, neg[:1])
    w = torch.eye(3, dtype=torch.bfloat16)
    assert directions_from_features(w, [0, 2]).dtype == torch.bfloat16
    assert directions_from_features(w, [0, 2], [1.0, 2.0]).dtype == torch.bfloat16


def test_sae_training_keeps_its_hold_out():
    x = torch.randn(300, 8)
    chunks = [x[:70], x[70:150], x[150:]]  # the hold-out is drawn across chunk boundaries
    cfg = TrainConfig(steps=100, batch_size=32, epochs=3, eval_tokens=64, shuffle_tokens=128, progress=False)
    _, report = train_sae(chunks, 16, "topk", 2, config=cfg)
    assert report.tokens_seen == 3 * (300 - 64)  # every pass skips exactly the 64 held-out tokens
    with pytest.raises(ValueError, match="holds 300 tokens, fewer than the 512 held out"):
        train_sae(
            x, 16, "topk", 2, config=TrainConfig(steps=5, batch_size=32, epochs=1, eval_tokens=512, progress=False)
        )
    with pytest.raises(ValueError, match="no tokens beyond the evaluation hold-out"):  # used to train on it
        train_sae(x, 16, "topk", 2, config=TrainConfig(steps=5, batch_size=32, eval_tokens=300, progress=False))


def test_removal_with_restored_norm_keeps_token_norms_and_drops_the_concept():
    model = torch.nn.Sequential(torch.nn.Linear(4, 6))
    direction = torch.randn(6)
    x = torch.randn(5, 3, 4)
    with torch.no_grad():
        h = model(x)
        with attach(model, SteeringVector({"0": direction}).hooks(mode="remove", restore_norm=True)):
            removed = model(x)
    unit = direction / direction.norm()
    torch.testing.assert_close(removed.norm(dim=-1), h.norm(dim=-1))
    assert float((removed @ unit).max()) < 1e-5  # what pointed along the concept now does not
    untouched = (h @ unit) <= 0  # max(0, <h, v>): tokens against the concept are left alone
    torch.testing.assert_close(removed[untouched], h[untouched])


def test_sae_of_another_dtype_edits_in_its_own_precision():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8)).to(torch.bfloat16)
    sae = SAE(8, 16, "topk", k=4, seed=1)  # float32
    x = torch.randn(3, 4, dtype=torch.bfloat16)
    with torch.no_grad():
        h = model(x)
        with attach(model, {"0": sae.edit(zero(range(16)))}):
            edited = model(x)
        expected = (h.float() - sae.decode(sae.encode(h.float())) + sae.decode(torch.zeros(3, 16))).bfloat16()
    assert edited.dtype == torch.bfloat16
    torch.testing.assert_close(edited, expected, atol=0.05, rtol=0.02)


def _sparse_codes(n: int = 8192) -> torch.Tensor:
    """Tokens built from 4 of 32 directions each: a code every SAE kind can learn."""
    g = torch.Generator().manual_seed(0)
    codes = torch.zeros(n, 32)
    active = torch.rand(n, 32, generator=g).argsort(-1)[:, :4]
    codes.scatter_(1, active, torch.rand(n, 4, generator=g) + 0.5)
    return codes @ torch.randn(32, 16, generator=g)


# measured on held-out tokens: topk 0.19 / batchtopk 0.23 (L0 4), relu 0.13 (L0 21), jumprelu 0.04 (L0 24);
# an SAE that learnt nothing has FVU 1. The ReLU default l1_coeff (5.0) silences every latent on this data.
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    ("kind", "extra", "max_l0"),
    [("topk", {}, 4), ("batchtopk", {}, 4), ("relu", {"l1_coeff": 0.2}, 32), ("jumprelu", {}, 32)],
)
def test_every_sae_kind_trains(kind, extra, max_l0):
    cfg = TrainConfig(steps=400, batch_size=256, lr=3e-3, eval_tokens=1024, progress=False, **extra)
    sae, report = train_sae(_sparse_codes(), d_sae=64, kind=kind, k=4, config=cfg)
    assert report.fvu < 0.3 and report.l0 <= max_l0, report
    assert sae.kind == kind and report.dead_fraction < 0.5
