"""The calorimeter world: determinism, shapes, regimes, per-condition spread, channels, I/O."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recipes.worlds import calorimeter as cal


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def spread_data(one_thread) -> dict[str, torch.Tensor]:
    # 160 conditions x 8 repeats: ~1,300 events, well under a second on an idle core.
    return cal.generate_dataset(160, repeats=8, generator=gen(123))


# ------------------------------------------------------------------ determinism and shapes


def test_deterministic_for_a_seed():
    c1 = cal.sample_conditions(24, gen(7))
    c2 = cal.sample_conditions(24, gen(7))
    assert torch.equal(c1, c2)
    x1 = cal.simulate(c1, gen(11), repeats=2)
    x2 = cal.simulate(c2, gen(11), repeats=2)
    assert torch.equal(x1, x2)
    assert not torch.equal(x1, cal.simulate(c1, gen(12), repeats=2))
    d1 = cal.generate_dataset(8, 3, gen(5))
    d2 = cal.generate_dataset(8, 3, gen(5))
    assert d1.keys() == d2.keys()
    assert all(torch.equal(d1[k], d2[k]) for k in d1)


@settings(max_examples=8, deadline=None)
@given(
    n=st.integers(0, 8),
    repeats=st.integers(1, 3),
    neutron=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_shapes_and_dtypes(n, repeats, neutron, seed):
    shape = cal.NEUTRON_SHAPE if neutron else cal.PROTON_SHAPE
    g = gen(seed)
    cond = cal.sample_conditions(n, g)
    assert cond.shape == (n, 9) and cond.dtype == torch.float32
    images = cal.simulate(cond, g, repeats=repeats, shape=shape)
    assert images.shape == (n * repeats, *shape)
    assert images.dtype == torch.float32
    assert bool((images >= 0).all()) and torch.equal(images, images.round())
    ch = cal.channel_sums(images)
    assert ch.shape == (n * repeats, 5)
    torch.testing.assert_close(ch.sum(-1), cal.photon_sums(images))
    reg = cal.regime_of(cond)
    assert reg.shape == (n,) and reg.dtype == torch.int64
    assert bool(((reg >= 0) & (reg < len(cal.REGIMES))).all())


def test_conditions_are_physical():
    c = cal.sample_conditions(2000, gen(3))
    energy, vx, vy, vz, px, py, pz, mass, charge = c.unbind(-1)
    p = torch.sqrt(px.double() ** 2 + py.double() ** 2 + pz.double() ** 2)
    torch.testing.assert_close(p**2 + mass.double() ** 2, energy.double() ** 2, rtol=1e-5, atol=0)
    assert set(charge.unique().tolist()) == {-1.0, 0.0, 1.0, 2.0}
    assert bool((pz > 0).all())
    counts = torch.bincount(cal.regime_of(c), minlength=4).double() / len(c)
    expected = torch.tensor([s[3] for s in cal.SPECIES], dtype=torch.float64)
    torch.testing.assert_close(counts, expected, atol=0.04, rtol=0)


# ------------------------------------------------------------------ regimes and spread


def test_regimes_have_clearly_separated_photon_sums():
    data = cal.generate_dataset(600, repeats=1, generator=gen(2024))
    q = {}
    for k, name in enumerate(cal.REGIMES):
        s = data["photon_sum"][data["regime"] == k].double()
        assert s.numel() > 50, name
        q[name] = torch.quantile(s, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
    # measured on 6,000 events (module doc): empty 0/2/5, low 37/112/204,
    # medium 403/1054/2080, high 3166/5340/7626
    assert q["empty"][2] <= 10  # near-empty events
    assert 20 <= q["low"][0] and q["low"][2] <= 260
    assert 300 <= q["medium"][0] and q["medium"][2] <= 2600
    assert 2700 <= q["high"][0] and q["high"][2] <= 9500
    names = cal.REGIMES
    for lo, hi in zip(names[:-1], names[1:], strict=True):
        assert q[lo][2] < q[hi][0], (lo, hi)  # 95% of one below 95% of the next
        assert q[hi][1] > 3 * q[lo][1] + 3  # medians far apart


def test_per_condition_spread(spread_data):
    d = spread_data
    sums = d["photon_sum"].view(-1, 8).double()
    regime = d["regime"].view(-1, 8)[:, 0]
    std = sums.std(dim=1)
    torch.testing.assert_close(d["photon_sum_std"].view(-1, 8)[:, 0].double(), std)
    mean = sums.mean(dim=1)
    cv = {}
    for k, name in enumerate(cal.REGIMES):
        sel = regime == k
        assert sel.sum() > 10, name
        if k > 0:  # every charged condition fluctuates from event to event
            assert bool((std[sel] > 0).all()), name
        cv[name] = (std[sel] / mean[sel]).median().item()
    # absolute spread grows with the regime; relative spread differs by regime
    mean_std = [std[regime == k].mean().item() for k in range(4)]
    assert mean_std == sorted(mean_std)
    assert cv["medium"] > 1.3 * cv["low"] > 1.3 * cv["high"]
    # images of one condition differ pixel-wise too
    imgs = d["images"].view(-1, 8, *cal.PROTON_SHAPE)
    assert bool((imgs[regime > 0].std(dim=1).sum(dim=(-2, -1)) > 0).all())


def test_shower_centre_follows_vertex_and_momentum():
    base = torch.tensor([[1500.0, 0, 0, 0, 0, 0, 1500.0, 0.93827, 1.0]]).repeat(400, 1)
    shifted = base.clone()
    shifted[:, 1] = 0.8  # vx +0.8 cm -> +2 rows
    shifted[:, 5] = 1500.0 * 1.5e-4  # py: +1.5e-4 rad over 112.5 m -> +1.69 cm -> +4.2 cols
    par0 = cal.shower_parameters(base[:1])
    par1 = cal.shower_parameters(shifted[:1])
    assert float(par1["centre_row"] - par0["centre_row"]) == pytest.approx(2.0, abs=1e-6)
    assert float(par1["centre_col"] - par0["centre_col"]) == pytest.approx(4.22, abs=0.01)

    def centroid(cond):
        img = cal.simulate(cond, gen(0)).sum(0).double()
        r = torch.arange(img.shape[0], dtype=torch.float64) + 0.5
        c = torch.arange(img.shape[1], dtype=torch.float64) + 0.5
        tot = img.sum()
        return (img.sum(1) @ r / tot).item(), (img.sum(0) @ c / tot).item()

    (r0, c0), (r1, c1) = centroid(base), centroid(shifted)
    assert r0 == pytest.approx(float(par0["centre_row"]), abs=0.3)
    assert c0 == pytest.approx(float(par0["centre_col"]), abs=0.3)
    assert r1 - r0 == pytest.approx(2.0, abs=0.3)
    assert c1 - c0 == pytest.approx(4.22, abs=0.3)
    # heavier / softer particles give wider showers
    assert float(cal.shower_parameters(base[:1].clone().index_fill_(1, torch.tensor([7]), 3.7))["sigma_core"]) > float(
        par0["sigma_core"]
    )


# ------------------------------------------------------------------ channels


def _reference_channels(images: torch.Tensor) -> torch.Tensor:
    """The papers' sum_channels_parallel, written as explicit loops."""
    n, rows, cols = images.shape
    out = torch.zeros(n, 5, dtype=torch.float64)
    for r in range(rows):
        for c in range(cols):
            if (r + c) % 2:
                ch = 4
            else:
                ch = (0 if r < rows // 2 else 2) + (0 if c < cols // 2 else 1)
            out[:, ch] += images[:, r, c].double()
    return out


@pytest.mark.parametrize("shape", [cal.PROTON_SHAPE, cal.NEUTRON_SHAPE])
def test_channel_split(shape):
    masks = cal.channel_masks(shape)
    assert masks.shape == (5, *shape)
    torch.testing.assert_close(masks.sum(0), torch.ones(shape))  # a partition
    assert masks[4].sum() == shape[0] * shape[1] // 2
    images = torch.poisson(torch.rand(6, *shape, generator=gen(1)) * 5, generator=gen(2))
    torch.testing.assert_close(cal.channel_sums(images).double(), _reference_channels(images))
    ints = images.to(torch.int32)
    torch.testing.assert_close(cal.channel_sums(ints), _reference_channels(images))


# ------------------------------------------------------------------ I/O


def test_save_load_round_trip_bit_identical(tmp_path):
    data = cal.generate_dataset(20, 3, gen(9))
    meta = cal.dataset_metadata(20, 3, 9, cal.PROTON_SHAPE)
    path = tmp_path / "calo.safetensors"
    cal.save_dataset(path, data, meta)
    loaded, meta2 = cal.load_dataset(path)
    assert meta2 == json.loads(json.dumps(meta))
    assert loaded.keys() == data.keys()
    for k in data:
        assert loaded[k].dtype == data[k].dtype, k
        assert loaded[k].shape == data[k].shape, k
        assert torch.equal(loaded[k], data[k]), k
    # photon-count images are stored compactly
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert f.get_slice("images").get_dtype() == "I16"


@settings(max_examples=15, deadline=None)
@given(
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64, torch.uint8]),
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=3),
    seed=st.integers(0, 1000),
    as_images=st.booleans(),
)
def test_round_trip_random_tensors(tmp_path_factory, dtype, shape, seed, as_images):
    t = (torch.randn(shape, generator=gen(seed)) * 50).to(dtype)
    key = "images" if as_images else "x"
    path = tmp_path_factory.mktemp("rt") / "t.safetensors"
    cal.save_dataset(path, {key: t, "y": torch.arange(3)}, {"note": "ü", "n": [1, 2]})
    loaded, meta = cal.load_dataset(path)
    assert loaded[key].dtype == t.dtype and torch.equal(loaded[key], t)
    # bit-identical, including signed zeros and non-integer floats
    if t.is_floating_point():
        assert torch.equal(torch.signbit(loaded[key]), torch.signbit(t))
    assert meta == {"note": "ü", "n": [1, 2]}


def test_non_safetensors_files_are_refused(tmp_path):
    data = {"images": torch.zeros(2, 4, 4)}
    pkl = tmp_path / "data.pkl"
    pkl.write_bytes(pickle.dumps(data))
    with pytest.raises(ValueError, match="not a safetensors file.*pickle"):
        cal.load_dataset(pkl)
    pt = tmp_path / "data.pt"
    torch.save(data, pt)
    with pytest.raises(ValueError, match="not a safetensors file.*zip"):
        cal.load_dataset(pt)
    txt = tmp_path / "data.txt"
    txt.write_text("photon sums, one a line\n1\n2\n")
    with pytest.raises(ValueError, match="not a safetensors file"):
        cal.load_dataset(txt)
    short = tmp_path / "short.bin"
    short.write_bytes(b"abc")
    with pytest.raises(ValueError, match="too short"):
        cal.load_dataset(short)
    # a valid safetensors file that is not a calorimeter data set
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.ones(2)}, str(other))
    with pytest.raises(ValueError, match="not a calorimeter data set"):
        cal.load_dataset(other)


def test_figure(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "calo.png"
    cal.make_figure(out, n_conditions=24, repeats=2, seed=0)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
