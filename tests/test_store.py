"""Activation stores: memory, CPU offload, disk shards with bounded memory; Cache -> Patch."""

import itertools
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from interventions import Cache, DiskStore, MemoryStore, Patch, attach
from interventions.context import Context, RunState

dtypes = st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.int64])
shapes = st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(shapes, dtypes), min_size=1, max_size=6), st.integers(64, 4096))
def test_disk_store_roundtrip_is_bit_identical(tmp_path_factory, items, buffer_bytes):
    path = tmp_path_factory.mktemp("store")
    store = DiskStore(path, buffer_bytes=buffer_bytes)
    expected = {}
    for i, (shape, dtype) in enumerate(items):
        t = (torch.randn(shape) * 100).to(dtype)
        key = (f"site.{i % 3}", i, "cond" if i % 2 else None)
        store.put(key, t)
        expected[key] = t
    store.flush()
    reopened = DiskStore(path)
    assert set(reopened.keys()) == set(expected)
    for key, t in expected.items():
        got = reopened.get(key)
        assert got.dtype == t.dtype and torch.equal(got, t)


def test_disk_store_keeps_memory_bounded(tmp_path):
    store = DiskStore(tmp_path, buffer_bytes=15_000)
    for step in range(50):
        store.put(("blocks.0", step, "cond"), torch.randn(1000))  # 4 kB each
        assert store._buffered < 15_000
    store.flush()
    # an entry counts its 4 kB and the fixed per-entry cost (1 kB), so 3 fill the 15 kB buffer:
    # 50 = 16 x 3 + 2
    assert len(list(tmp_path.glob("shard-*.safetensors"))) == 17
    assert torch.equal(store.get(("blocks.0", 7, "cond")), DiskStore(tmp_path).get(("blocks.0", 7, "cond")))


def test_cache_to_disk_then_patch_from_disk_reproduces_output(tmp_path, tiny_mlp):
    x = torch.randn(3, 4)
    cache = Cache(DiskStore(tmp_path, buffer_bytes=256))
    with torch.no_grad():
        with attach(tiny_mlp, {"layers.*": cache, "embed": cache}):
            ref = tiny_mlp(x)
        cache.store.flush()
        with attach(tiny_mlp, {"layers.*": Patch(DiskStore(tmp_path)), "embed": Patch(cache)}):
            got = tiny_mlp(torch.zeros(3, 4))
    assert torch.equal(got, ref)


def test_memory_store_offloads_and_reports_missing_keys():
    store = MemoryStore(device="cpu")
    store.put(("a", 0, "cond"), torch.ones(2))
    assert store.get(("a", 0, "cond")).device.type == "cpu"
    with pytest.raises(KeyError, match=r"no cached activation for site 'a', step 1, branch 'cond'.*\('a', 0, 'cond'\)"):
        store.get(("a", 1, "cond"))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=1, max_size=3))
def test_row_split_cache_is_the_same_in_memory_and_on_disk(tmp_path_factory, sizes):
    # a batched CFG call is stored per branch: lazily in memory, copied on disk; both read back
    # exactly the rows of each branch
    x = torch.randn(sum(sizes), 3, 2)
    bounds = torch.tensor([0, *sizes]).cumsum(0).tolist()
    segments = [(f"b{i}", slice(a, b)) for i, (a, b) in enumerate(itertools.pairwise(bounds))]
    ctx = Context("blocks.0", RunState())
    in_memory, on_disk = Cache(), Cache(DiskStore(tmp_path_factory.mktemp("rows"), buffer_bytes=64))
    for cache in (in_memory, on_disk):
        cache.whole_batch(x, ctx, segments)
    step = ctx.key[1]  # outside any call here
    for branch, rows in segments:
        assert torch.equal(in_memory.get("blocks.0", step, branch), x[rows])
        assert torch.equal(on_disk.get("blocks.0", step, branch), x[rows])
    x.add_(1)  # the cache holds its own copy
    assert not torch.equal(in_memory.get("blocks.0", step, "b0"), x[segments[0][1]])


def test_import_interventions_stays_light():
    code = "import sys, interventions; print(sorted(m for m in ('diffusers','transformers','stable_audio_tools','huggingface_hub') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


ops = st.lists(
    st.tuples(st.sampled_from(["put", "append", "flush"]), st.integers(0, 2), st.integers(1, 3)), max_size=14
)


@settings(max_examples=40, deadline=None)
@given(ops, st.integers(64, 2048))
def test_put_and_append_read_back_the_same_in_memory_on_disk_and_reopened(tmp_path_factory, steps, buffer_bytes):
    """put replaces a key's parts, append adds one; get concatenates them, parts yields them in order."""
    path = tmp_path_factory.mktemp("parts")
    stores = [MemoryStore(), DiskStore(path, buffer_bytes=buffer_bytes)]
    expected: dict = {}
    for i, (op, k, rows) in enumerate(steps):
        key = ("site", k, "cond")
        t = torch.full((rows, 3), float(i))
        if op == "flush":
            stores[1].flush()
            continue
        for store in stores:
            getattr(store, op)(key, t)
        expected[key] = [t] if op == "put" or key not in expected else [*expected[key], t]
    stores[1].flush()
    for store in [*stores, DiskStore(path)]:
        assert set(store.keys()) == set(expected)
        for key, parts in expected.items():
            assert torch.equal(store.get(key), torch.cat(parts))
            assert [p.shape[0] for p in store.parts(key)] == [p.shape[0] for p in parts]


def test_parts_of_other_shapes_are_read_one_at_a_time():
    store = MemoryStore()
    store.append(("s", 0, None), torch.ones(2, 4))
    store.append(("s", 0, None), torch.ones(1, 5))
    with pytest.raises(ValueError, match=r"parts of different shapes \[\(4,\), \(5,\)\].*store.parts"):
        store.get(("s", 0, None))
    assert [tuple(p.shape) for p in store.parts(("s", 0, None))] == [(2, 4), (1, 5)]


def test_cache_keeps_replaces_or_warns_when_a_pipeline_is_called_again():
    from tests import tiny_models

    pipe = tiny_models.sd_pipeline()
    run = dict(num_inference_steps=2, guidance_scale=2.0, output_type="pt")
    kept, latest, warned = Cache(on_repeat="append"), Cache(on_repeat="replace"), Cache()
    with attach(pipe, {"unet.mid_block": [kept, latest, warned]}):
        pipe("a red circle", generator=torch.Generator().manual_seed(0), **run)
        first = latest.get("unet.mid_block", 1, "cond").clone()
        with pytest.warns(UserWarning, match=r"Cache replaced .*on_repeat='append'"):
            pipe("a blue square", generator=torch.Generator().manual_seed(1), **run)
    key = ("unet.mid_block", 1, "cond")
    parts = list(kept.store.parts(key))
    assert len(parts) == 2 and torch.equal(parts[0], first) and torch.equal(parts[1], latest.store.get(key))
    assert torch.equal(warned.store.get(key), latest.store.get(key)) and not torch.equal(parts[0], parts[1])
    with pytest.raises(ValueError, match="on_repeat must be"):
        Cache(on_repeat="keep")


def test_keys_of_a_site_follow_every_change_of_the_store(tmp_path):
    """The per-site index is rebuilt after puts, clears and flushes (reading every site of a cache
    is one pass over its keys, and never reads a stale index)."""
    memory = MemoryStore()
    memory.put(("a", 0, None), torch.zeros(1))
    memory.put(("b", 0, None), torch.zeros(1))
    assert memory.keys_of("a") == [("a", 0, None)]
    memory.clear()
    memory.put(("a", 1, None), torch.zeros(1))
    memory.put(("a", 2, "cond"), torch.zeros(1))  # as many keys as before the clear
    assert memory.keys_of("a") == [("a", 1, None), ("a", 2, "cond")] and memory.keys_of("b") == []
    disk = DiskStore(tmp_path, buffer_bytes=1 << 20)
    disk.put(("a", 0, None), torch.zeros(1))
    assert disk.keys_of("a") == [("a", 0, None)]
    disk.flush()
    disk.put(("a", 0, None), torch.ones(1))  # replaced: same keys
    disk.put(("a", 1, None), torch.ones(1))
    assert sorted(disk.keys_of("a")) == [("a", 0, None), ("a", 1, None)]
    disk.close()
