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
        cache.put_rows(x, ctx, segments)
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
