"""The SAE (SAELens >= 6) and steering-vector formats: one owner each, both directions.

Round trips are bit-identical, SAELens' own folders load (metadata kept, no metadata, TopK with
decoder-norm rescaling folded), every branch of the core's vocabulary is saveable, and hostile
configs (NaN, Infinity, wrong types, huge versions) are refused by name with nothing written.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub_cards import ArtifactError, read_artifact, write_artifact
from interventions.context import BRANCHES
from interventions.sae import SAE, SAEInfo
from interventions.steering import SteeringVector

NAMES = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def bits(t: torch.Tensor) -> torch.Tensor:
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(view)


def weights(sae: SAE) -> dict[str, torch.Tensor]:
    names = NAMES if sae.kind == "jumprelu" else NAMES[:4]
    return {n: getattr(sae, n).detach() for n in names}


def assert_same_sae(a: SAE, b: SAE) -> None:
    assert (a.kind, a.d_in, a.d_sae, a.apply_b_dec_to_input) == (b.kind, b.d_in, b.d_sae, b.apply_b_dec_to_input)
    if a.kind in ("topk", "batchtopk"):
        assert a.k == b.k
    assert a.info == b.info
    wa, wb = weights(a), weights(b)
    for n in wa:
        assert wa[n].dtype == wb[n].dtype and torch.equal(bits(wa[n]), bits(wb[n])), n


def random_sae(kind="topk", d_in=8, d_sae=32, dtype=torch.float32, seed=0, centred=True, **info) -> SAE:
    sae = SAE(d_in, d_sae, kind, min(4, d_sae), info=SAEInfo(**info), dtype=dtype, apply_b_dec_to_input=centred)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in weights(sae).values():
            t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64).to(dtype))
        if kind == "jumprelu":
            sae.threshold.abs_()
    return sae


def saelens_cfg(arch="topk", **top) -> dict:
    """A config as SAELens 6.54 writes it with its defaults (no hook_name or model_name)."""
    cfg = {
        "d_in": 8,
        "d_sae": 32,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"sae_lens_version": "6.54.12", "sae_lens_training_version": "6.54.12"},
        "architecture": arch,
        **top,
    }
    if arch == "topk":
        cfg.setdefault("k", 4)
        cfg.setdefault("rescale_acts_by_decoder_norm", False)
    return cfg


def saelens_tensors(seed=0, jumprelu=False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = {
        "W_enc": torch.randn(8, 32, generator=g),
        "W_dec": torch.randn(32, 8, generator=g) * 3,  # rows far from unit norm
        "b_enc": torch.randn(32, generator=g),
        "b_dec": torch.randn(8, generator=g),
    }
    return t | ({"threshold": torch.rand(32, generator=g)} if jumprelu else {})


def edit_cfg(folder: Path, fn) -> None:
    cfg = json.loads((folder / "cfg.json").read_text())
    fn(cfg)
    (folder / "cfg.json").write_text(json.dumps(cfg))


# ------------------------------------------------------------------------------------------- layouts


def test_sae_layout_is_saelens_6(tmp_path):
    sae = random_sae("batchtopk", site="unet.mid_block", base_model="tiny/unet", layout="BCHW", steps=[0, 1, 7])
    sae.save(tmp_path / "sae")
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    raw = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    # SAELens has no inference class for batchtopk: per-token top-k at inference is its "topk".
    assert raw["architecture"] == "topk" and raw["k"] == 4
    assert (raw["d_in"], raw["d_sae"], raw["dtype"], raw["device"]) == (8, 32, "float32", "cpu")
    assert raw["apply_b_dec_to_input"] is True
    assert raw["normalize_activations"] == raw["reshape_activations"] == "none"
    meta = raw["metadata"]
    assert meta["sae_lens_version"] == "6.5.0" and meta["interventions_architecture"] == "batchtopk"
    assert meta["hook_name"] == meta["site"] == "unet.mid_block"
    assert meta["model_name"] == meta["base_model"] == "tiny/unet"
    assert meta["sdk_version"] and meta["layout"] == "BCHW" and meta["steps"] == [0, 1, 7]
    assert_same_sae(SAE.load(tmp_path / "sae"), sae)


def test_steering_vector_layout(tmp_path):
    v = SteeringVector({"a.b": torch.randn(4), ("c", 3): torch.randn(6)}, base_model="m", branch="cond")
    v.save(tmp_path / "v")
    cfg, tensors = read_artifact(tmp_path / "v", "steering_vector.safetensors", "steering vector")
    assert sorted(tensors) == ["direction.a.b", "direction.c.step3"]
    assert (cfg["sites"], cfg["steps"], cfg["branch"], cfg["default_scale"]) == (["a.b", "c"], [3], "cond", 1.0)
    back = SteeringVector.load(tmp_path / "v")
    assert back.directions.keys() == v.directions.keys() and back.branch == "cond"


@pytest.mark.parametrize("branch", BRANCHES)
def test_every_branch_of_the_core_is_saveable(tmp_path, branch):
    """InstructPix2Pix (image_cond), PAG (perturbed) and SD3 skip-layer guidance (skip_layers) included."""
    sae = random_sae(site="unet.mid_block", branch=branch)
    sae.save(tmp_path / "sae")
    assert SAE.load(tmp_path / "sae").info.branch == branch
    v = SteeringVector({"unet.mid_block": torch.ones(4)}, branch=branch)
    v.save(tmp_path / "v")
    assert SteeringVector.load(tmp_path / "v").branch == branch
    with pytest.raises(ArtifactError, match=r"branch' must be one of \['all', 'cond'.*got 'both'"):
        random_sae(branch="both").save(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------------- SAELens folders


def test_saelens_hook_and_model_names_and_unused_metadata_are_kept(tmp_path):
    cfg = saelens_cfg("standard")
    cfg["metadata"] |= {
        "hook_name": "blocks.3.hook_resid_post",
        "model_name": "gpt2",
        "dataset_path": "monology/pile",
        "context_size": 128,
    }
    write_artifact(tmp_path / "theirs", "sae_weights.safetensors", cfg, saelens_tensors())
    sae = SAE.load(tmp_path / "theirs")
    assert (sae.kind, sae.info.site, sae.info.base_model) == ("relu", "blocks.3.hook_resid_post", "gpt2")
    assert sae.info.extra == {
        "sae_lens_training_version": "6.54.12",
        "dataset_path": "monology/pile",
        "context_size": 128,
    }
    sae.save(tmp_path / "ours")
    meta = json.loads((tmp_path / "ours" / "cfg.json").read_text())["metadata"]
    assert (meta["hook_name"], meta["model_name"]) == ("blocks.3.hook_resid_post", "gpt2")
    assert (meta["dataset_path"], meta["context_size"], meta["sae_lens_training_version"]) == (
        "monology/pile",
        128,
        "6.54.12",
    )
    assert "unknown" not in json.dumps(meta)
    assert_same_sae(SAE.load(tmp_path / "ours"), sae)


def test_hook_name_other_than_our_site_survives(tmp_path):
    sae = random_sae(site="unet.mid_block", extra={"hook_name": "blocks.0.hook_resid_pre"})
    sae.save(tmp_path / "sae")
    meta = json.loads((tmp_path / "sae" / "cfg.json").read_text())["metadata"]
    assert (meta["site"], meta["hook_name"]) == ("unet.mid_block", "blocks.0.hook_resid_pre")
    assert SAE.load(tmp_path / "sae").info.extra == {"hook_name": "blocks.0.hook_resid_pre"}


def test_saelens_folder_saved_with_defaults_loads_without_a_site(tmp_path):
    write_artifact(tmp_path / "sae", "sae_weights.safetensors", saelens_cfg("jumprelu"), saelens_tensors(jumprelu=True))
    sae = SAE.load(tmp_path / "sae")
    assert (sae.kind, sae.info.site, sae.info.base_model) == ("jumprelu", "", "")
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    t = saelens_tensors(jumprelu=True)
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    torch.testing.assert_close(sae.encode(x).detach(), torch.relu(pre) * (pre > t["threshold"]), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="records no site"):
        sae.attach(torch.nn.Linear(8, 8))


def _saelens_topk_rescaled(t: dict[str, torch.Tensor], x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SAELens 6.54 TopKSAE.encode / decode with rescale_acts_by_decoder_norm=True, line for line."""
    n = t["W_dec"].norm(dim=-1)
    hidden = ((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]) * n
    top = hidden.topk(k, dim=-1, sorted=False)
    z = torch.zeros_like(hidden).scatter(-1, top.indices, top.values.relu())
    return z, (z * (1 / n)) @ t["W_dec"] + t["b_dec"]


def test_topk_with_decoder_norm_rescaling_is_folded(tmp_path):
    t = saelens_tensors(seed=3)
    write_artifact(tmp_path / "sae", "sae_weights.safetensors", saelens_cfg(rescale_acts_by_decoder_norm=True), t)
    sae = SAE.load(tmp_path / "sae")
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(4))
    z_ref, x_hat_ref = _saelens_topk_rescaled(t, x, 4)
    with torch.no_grad():
        z = sae.encode(x)
        x_hat = sae.decode(z)
    assert torch.equal(z != 0, z_ref != 0)  # the same latents fire
    torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_hat, x_hat_ref, rtol=1e-5, atol=1e-5)
    assert float((x_hat - x_hat_ref).abs().max() / x_hat_ref.abs().max()) < 1e-6  # float32 rounding only
    # re-saved without rescaling, the folded weights compute the same
    sae.save(tmp_path / "ours")
    assert "rescale_acts_by_decoder_norm" not in json.loads((tmp_path / "ours" / "cfg.json").read_text())
    assert torch.equal(SAE.load(tmp_path / "ours").decode(z), x_hat)


@pytest.mark.parametrize(
    ("top", "message"),
    [
        ({"architecture": "gated"}, "architecture 'gated' is not supported"),
        ({"normalize_activations": "layer_norm"}, "normalize_activations='layer_norm'"),
        ({"reshape_activations": "hook_z"}, "reshape_activations='hook_z'"),
    ],
)
def test_saelens_settings_we_cannot_compute_are_refused_by_name(tmp_path, top, message):
    write_artifact(tmp_path / "sae", "sae_weights.safetensors", saelens_cfg("standard", **top), saelens_tensors())
    with pytest.raises(ArtifactError, match=message):
        SAE.load(tmp_path / "sae")


# ------------------------------------------------------------------------------ hostile config values


def _saved_vector(tmp_path) -> Path:
    SteeringVector({"a": torch.ones(4)}, base_model="m").save(tmp_path / "v")
    return tmp_path / "v"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('"default_scale": NaN', "default_scale.* is nan; only finite numbers"),
        ('"default_scale": Infinity', "default_scale.* is inf; only finite numbers"),
        ('"default_scale": -Infinity', "default_scale.* is -inf"),
    ],
)
def test_steering_vector_non_finite_scale_is_refused(tmp_path, text, message):
    folder = _saved_vector(tmp_path)
    raw = (folder / "cfg.json").read_text()
    (folder / "cfg.json").write_text(raw.replace('"default_scale": 1.0', text))
    with pytest.raises(ArtifactError, match=message):
        SteeringVector.load(folder)


def test_steering_vector_wrong_typed_extra_is_refused(tmp_path):
    folder = _saved_vector(tmp_path)
    edit_cfg(folder, lambda c: c.update(extra=[1, 2]))
    with pytest.raises(ArtifactError, match=r"'extra' must be dict, got list \[1, 2\]"):
        SteeringVector.load(folder)


def test_saving_a_non_finite_scale_writes_nothing(tmp_path):
    with pytest.raises(ArtifactError, match="'default_scale' must be a finite number, got nan"):
        SteeringVector({"a": torch.ones(4)}, default_scale=float("nan")).save(tmp_path / "v")
    assert not (tmp_path / "v").exists()


def test_non_finite_weights_are_refused(tmp_path):
    sae = random_sae(site="s")
    sae.save(tmp_path / "sae")
    from safetensors.torch import load_file, save_file

    path = tmp_path / "sae" / "sae_weights.safetensors"
    t = load_file(path)
    t["W_dec"][3, :2] = float("nan")
    t["b_enc"][0] = float("inf")
    save_file(t, path)
    with pytest.raises(ArtifactError) as err:
        SAE.load(tmp_path / "sae")
    assert "tensor 'W_dec' has 2 non-finite values" in str(err.value)
    assert "tensor 'b_enc' has 1 non-finite values" in str(err.value)
    with torch.no_grad():
        sae.W_enc[0, 0] = float("nan")
    with pytest.raises(ArtifactError, match="'W_enc' has 1 non-finite"):
        sae.save(tmp_path / "nan")
    assert not (tmp_path / "nan").exists()
    v = SteeringVector({"a": torch.tensor([1.0, float("nan")])})
    with pytest.raises(ArtifactError, match="'direction.a' has 1 non-finite"):
        v.save(tmp_path / "v")


@pytest.mark.parametrize("key", ["sae_lens_version", "sdk_version"])
def test_a_5000_digit_version_is_refused_by_name(tmp_path, key):
    random_sae(site="s").save(tmp_path / "sae")
    edit_cfg(tmp_path / "sae", lambda c: c["metadata"].update({key: "6" + "0" * 5000}))
    with pytest.raises(
        ArtifactError, match=rf"'metadata.{key}' must be a version like '6.5.0', got '60000.*5001 characters"
    ):
        SAE.load(tmp_path / "sae")


BAD_SAE_CFGS = {
    "missing d_sae": (lambda c: c.pop("d_sae"), "missing 'd_sae'"),
    "d_in as str": (lambda c: c.update(d_in="8"), "'d_in' must be int, got str"),
    "centring as str": (lambda c: c.update(apply_b_dec_to_input="yes"), "'apply_b_dec_to_input' must be bool"),
    "wrong width": (lambda c: c.update(d_in=9), r"'W_enc' has shape \[8, 32\], expected \[9, 32\]"),
    "old sae_lens": (lambda c: c["metadata"].update(sae_lens_version="5.9.1"), "must be >= 6.0.0"),
    "topk without k": (lambda c: c.pop("k"), "missing 'k'"),
    "k too big": (lambda c: c.update(k=33), "'k' must be in 1..d_sae=32"),
    "bad dtype": (lambda c: c.update(dtype="float8"), "'dtype' must be one of"),
    "bad steps": (lambda c: c["metadata"].update(steps=["0"]), "steps' must be a list of step indices"),
    "bad branch": (lambda c: c["metadata"].update(branch="both"), "branch' must be one of"),
    "metrics NaN-free but text": (lambda c: c["metadata"].update(metrics={"fvu": "low"}), "metrics' must map names"),
    "rescale on jumprelu": (
        lambda c: c.update(architecture="standard", rescale_acts_by_decoder_norm=True),
        "rescale_acts_by_decoder_norm=True on a 'standard' SAE",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SAE_CFGS))
def test_bad_sae_cfg(tmp_path, case):
    random_sae(site="s").save(tmp_path / "sae")
    mutate, message = BAD_SAE_CFGS[case]
    edit_cfg(tmp_path / "sae", mutate)
    with pytest.raises(ArtifactError, match=message) as err:
        SAE.load(tmp_path / "sae")
    assert str(tmp_path / "sae") in str(err.value)


def test_bad_sae_cfg_lists_every_problem(tmp_path):
    random_sae(site="s").save(tmp_path / "sae")
    edit_cfg(tmp_path / "sae", lambda c: (c.pop("d_sae"), c.update(dtype=3)))
    with pytest.raises(ArtifactError) as err:
        SAE.load(tmp_path / "sae")
    assert "missing 'd_sae'" in str(err.value) and "'dtype' must be str" in str(err.value)


@pytest.mark.parametrize(
    ("cfg", "tensors", "message"),
    [
        ({"sites": ["a"]}, {"direction.b": torch.ones(2)}, "is not 'direction.<site>'"),
        ({"sites": ["a", "z"]}, {"direction.a": torch.ones(2)}, r"no direction tensor for sites \['z'\]"),
        ({"steps": [3]}, {"direction.a.step4": torch.ones(2)}, "is for step 4, which is not in the config's steps"),
        ({}, {"direction.a": torch.ones(2), "direction.a.step3": torch.ones(3)}, "other directions of site 'a' have"),
        ({"default_scale": "4"}, {"direction.a": torch.ones(2)}, "'default_scale' must be float"),
        ({"method": None}, {"direction.a": torch.ones(2)}, "'method' must be str"),
        ({"branch": "both"}, {"direction.a": torch.ones(2)}, "branch' must be one of"),
    ],
)
def test_bad_steering_vector(tmp_path, cfg, tensors, message):
    base = {"base_model": "m", "sites": ["a"], "layout": None, "method": "caa", "default_scale": 1.0}
    base |= {"normalized": False, "steps": None, "branch": "all", "sdk_version": "0.1.0"}
    write_artifact(tmp_path / "v", "steering_vector.safetensors", base | cfg, tensors)
    with pytest.raises(ArtifactError, match=message):
        SteeringVector.load(tmp_path / "v")


# ------------------------------------------------------------------------------------------ properties

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
names = st.text(st.sampled_from("abcxyz_0123456789"), min_size=1, max_size=8)
site_names = st.lists(names, min_size=1, max_size=4).map(".".join)
meta_values = (
    st.none()
    | st.booleans()
    | st.integers(-(2**31), 2**31)
    | st.text(max_size=10)
    | st.lists(st.integers(0, 99), max_size=4)
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["relu", "topk", "batchtopk", "jumprelu"]),
    d_in=st.integers(1, 24),
    d_sae=st.integers(1, 48),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
    site=site_names,
    steps=st.none() | st.lists(st.integers(0, 999), max_size=6),
    branch=st.sampled_from(["all", *BRANCHES]),
    extra=st.dictionaries(names.map(lambda s: "x_" + s), meta_values, max_size=3),
)
def test_sae_save_load_bit_identical(kind, d_in, d_sae, dtype, seed, site, steps, branch, extra):
    sae = random_sae(
        kind,
        d_in,
        d_sae,
        dtype,
        seed,
        bool(seed % 2),
        site=site,
        steps=steps,
        branch=branch,
        extra=extra,
        base_model="m/" + site,
        method=kind,
        metrics={"fvu": 0.07, "l0": 8},
    )
    with tempfile.TemporaryDirectory() as tmp:
        sae.save(Path(tmp) / site)
        back = SAE.load(Path(tmp) / site)
    assert_same_sae(back, sae)


@settings(max_examples=20, deadline=None)
@given(
    sites=st.lists(site_names, min_size=1, max_size=3, unique=True),
    dim=st.integers(1, 16),
    per_step=st.lists(st.integers(0, 50), max_size=3, unique=True),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
    scale=st.floats(-100, 100, allow_nan=False),
    branch=st.sampled_from(["all", *BRANCHES]),
)
def test_steering_vector_save_load_bit_identical(sites, dim, per_step, dtype, seed, scale, branch):
    g = torch.Generator().manual_seed(seed)
    keys = [(s, k) for s in sites for k in per_step] if per_step else sites
    v = SteeringVector(
        {k: torch.randn(dim, generator=g, dtype=torch.float64).to(dtype) for k in keys},
        base_model="m/x",
        layout="BNC",
        method="pca",
        default_scale=scale,
        branch=branch,
        extra={"n": 3},
    )
    with tempfile.TemporaryDirectory() as tmp:
        v.save(tmp)
        back = SteeringVector.load(tmp)
    assert {
        k: getattr(back, k)
        for k in ("base_model", "layout", "method", "branch", "normalized", "default_scale", "extra")
    } == {
        k: getattr(v, k) for k in ("base_model", "layout", "method", "branch", "normalized", "default_scale", "extra")
    }
    assert back.directions.keys() == v.directions.keys()
    for k in v.directions:
        assert torch.equal(bits(back.directions[k]), bits(v.directions[k])), k


def test_decoder_norm_rescaling_with_a_zero_decoder_row_is_refused(tmp_path):
    t = saelens_tensors(seed=3)
    t["W_dec"][5] = 0.0
    write_artifact(tmp_path / "sae", "sae_weights.safetensors", saelens_cfg(rescale_acts_by_decoder_norm=True), t)
    with pytest.raises(ArtifactError, match="decoder rows of norm 0"):
        SAE.load(tmp_path / "sae")
