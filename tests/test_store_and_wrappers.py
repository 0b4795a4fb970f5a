"""Instance wrappers that sessions remove in any order, an adapter install that fails part-way,
copies to the CPU that finish before they are read, and disk stores that survive a failed flush
and open without a foreign or damaged shard file, naming it."""

import functools
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

import interventions.adapters.diffusers as diffusers_adapter
import interventions.store as store_module
from interventions import Cache, DiskStore, InterventionError, MemoryStore, attach
from interventions.adapters.base import Adapter, call_before, wrap_attribute
from interventions.testing import assert_no_hooks_left
from tests import tiny_models

STEPS = 2
FLUX_CFG = dict(prompt="a red circle", negative_prompt="blue", true_cfg_scale=3.0, max_sequence_length=16)
SITES = ("transformer:input.encoder_hidden_states", "transformer.transformer_blocks.0:output.1")


# -- wrappers of nested sessions, removed in any order --------------------------------------------
@pytest.fixture(scope="module")
def flux():
    return tiny_models.flux_pipeline()


def _flux_run(pipe):
    pipe(num_inference_steps=STEPS, output_type="pt", generator=torch.Generator().manual_seed(0), **FLUX_CFG)


def _instance_attributes(pipe):
    """The names each wrapped object holds on its instance (a run sets some; wrappers must not)."""
    return {
        name: set(vars(obj))
        for name, obj in (("pipe", pipe), ("scheduler", pipe.scheduler), ("transformer", pipe.transformer))
    }


@pytest.mark.parametrize("first", ["A", "B"])
def test_flux_sessions_removed_in_either_order_keep_branch_labels_and_leave_nothing(flux, first):
    alone = Cache()
    with attach(flux, dict.fromkeys(SITES, alone)):
        _flux_run(flux)
    before = _instance_attributes(flux)
    assert {k[1:] for k in alone.keys()} == {(s, b) for s in range(STEPS) for b in ("cond", "uncond")}

    caches = {"A": Cache(), "B": Cache()}
    sessions = {name: attach(flux, dict.fromkeys(SITES, cache)) for name, cache in caches.items()}
    second = "B" if first == "A" else "A"
    sessions[first].remove()
    _flux_run(flux)  # only the second session is active: labelled as when it runs alone
    kept = caches[second]
    assert sorted(kept.keys(), key=repr) == sorted(alone.keys(), key=repr)
    for key in alone.keys():
        assert torch.equal(kept.store.get(key), alone.store.get(key)), key
    assert len(caches[first]) == 0
    sessions[second].remove()
    assert _instance_attributes(flux) == before
    for component in (flux.transformer, flux.vae, flux.text_encoder, flux.text_encoder_2):
        assert_no_hooks_left(component)


class Greeter:
    def hello(self, x):
        return [x]


def _logging(log, i):
    def make(original):
        def wrapped(x):
            log.append(i)
            return original(x)

        return wrapped

    return make


@pytest.mark.parametrize("own", [False, True])
@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_plain_object_wrappers_removed_in_either_order(order, own):
    obj, log = Greeter(), []
    if own:
        obj.hello = own_hello = lambda x: ["own", x]
    undo = [wrap_attribute(obj, "hello", _logging(log, i)) for i in range(2)]
    assert obj.hello(7) == (["own", 7] if own else [7]) and log == [1, 0]
    undo[order[0]]()
    log.clear()
    obj.hello(7)
    assert log == [order[1]]  # the other wrapper still runs
    undo[order[1]]()
    undo[order[0]]()  # undo twice is harmless
    assert vars(obj) == ({"hello": own_hello} if own else {})
    log.clear()
    obj.hello(7)
    assert log == []


class GreeterModule(nn.Module):
    def hello(self, x):
        return [x]


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 4), st.booleans(), st.booleans(), st.data())
def test_wrappers_attached_and_removed_in_any_order(n, own, module, data):
    """Every call reaches exactly the active wrappers, latest first, whether made by
    ``wrap_attribute`` or ``call_before``, on a plain object or a module (whose wrappers are written
    past ``nn.Module.__setattr__``); at the end the instance holds what it held before."""
    obj, log = (GreeterModule() if module else Greeter()), []
    if own:
        obj.hello = own_hello = lambda x: ["own", x]
    before = dict(vars(obj))
    undo, active, attached = {}, [], 0
    while attached < n or active:
        can_attach = ["attach"] if attached < n else []
        action = data.draw(st.sampled_from(can_attach + [("remove", i) for i in active]))
        if action == "attach":
            if data.draw(st.booleans()):
                undo[attached] = call_before(obj, "hello", functools.partial(log.append, attached))
            else:
                undo[attached] = wrap_attribute(obj, "hello", _logging(log, attached))
            active.append(attached)
            attached += 1
        else:
            undo[action[1]]()
            active.remove(action[1])
        log.clear()
        assert obj.hello(3) == (["own", 3] if own else [3])
        assert log == active[::-1]
    assert vars(obj) == before
    if own:
        assert obj.hello is own_hello
    if module:
        assert "hello" not in obj._modules and "hello" not in obj._parameters


# -- an adapter install that fails part-way -------------------------------------------------------
class _HalfInstalled(Adapter):
    """Wraps two attributes, then fails."""

    def install(self, state):
        wrap_attribute(self.target, "forward", lambda f: f)
        wrap_attribute(self.target[0], "extra_repr", lambda f: f)
        raise RuntimeError("install failed")


def test_failed_install_undoes_the_wrappers_it_made():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="install failed"):
        attach(model, {"0": Cache()}, adapter=_HalfInstalled(model))
    assert "forward" not in vars(model) and "extra_repr" not in vars(model[0])
    assert_no_hooks_left(model)


def test_failed_pipeline_install_undoes_the_denoiser_wrapper(flux, monkeypatch):
    # the pipeline adapter wraps transformer.cache_context (in super().install()) and then the
    # scheduler: a failure at the scheduler must take the first wrapper off again
    real = diffusers_adapter.call_before

    def failing(obj, name, callback):
        if name == "set_timesteps":
            raise RuntimeError("cannot wrap the scheduler")
        return real(obj, name, callback)

    monkeypatch.setattr(diffusers_adapter, "call_before", failing)
    with pytest.raises(RuntimeError, match="cannot wrap the scheduler"):
        attach(flux, {SITES[0]: Cache()})
    assert "cache_context" not in vars(flux.transformer)
    assert "set_timesteps" not in vars(flux.scheduler)
    assert_no_hooks_left(flux.transformer)


# -- copies between devices ------------------------------------------------------------------------
class _FakeTensor:
    """Stands in for a tensor on another device: records how it is copied."""

    def __init__(self, device, pinned=False):
        self.device, self.pinned, self.copies = torch.device(device), pinned, []

    def is_pinned(self):
        return self.pinned

    def to(self, device, non_blocking=False):
        self.copies.append((torch.device(device).type, non_blocking))
        return torch.ones(2, 3)


@pytest.mark.parametrize("rows", [False, True])
def test_copies_to_the_cpu_wait_for_the_data(rows):
    store, x = MemoryStore(device="cpu"), _FakeTensor("cuda")
    if rows:
        store.put_rows(("a", 0, None), x, [("uncond", slice(0, 1)), ("cond", slice(1, 2))])
    else:
        store.put(("a", 0, "cond"), x)
    assert x.copies == [("cpu", False)]  # an asynchronous copy could be read before it is filled
    assert torch.equal(store.get(("a", 0, "cond")), torch.ones(1, 3) if rows else torch.ones(2, 3))


@pytest.mark.parametrize("pinned", [False, True])
def test_copies_to_the_device_are_asynchronous_only_from_pinned_memory(pinned):
    x = _FakeTensor("cpu", pinned=pinned)
    MemoryStore(device="cuda").put(("a", 0, None), x)
    assert x.copies == [("cuda", pinned)]


# -- disk stores: atomic shards, foreign files ----------------------------------------------------
K0, K1 = ("blocks.0", 0, "cond"), ("blocks.0", 1, "cond")


def _one_shard(path):
    store = DiskStore(path)
    store.put(K0, torch.arange(6.0).reshape(2, 3))
    store.flush()
    return store


def test_failed_flush_leaves_every_earlier_shard_readable(tmp_path, monkeypatch):
    store = _one_shard(tmp_path)
    store.put(K1, torch.ones(4))

    def killed_midway(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x90\x00\x00\x00\x00\x00\x00\x00{")  # a truncated header
        raise OSError("no space left on device")

    monkeypatch.setattr(store_module, "save_file", killed_midway)
    with pytest.raises(OSError, match="no space left"):
        store.flush()
    assert [p.name for p in tmp_path.glob("*shard*")] == ["shard-00000.safetensors"]
    reopened = DiskStore(tmp_path)
    assert reopened.keys() == [K0] and torch.equal(reopened.get(K0), torch.arange(6.0).reshape(2, 3))

    monkeypatch.undo()
    store.flush()  # the entries stayed buffered: a retry writes them
    assert sorted(DiskStore(tmp_path).keys()) == [K0, K1]
    assert sorted(p.name for p in tmp_path.glob("*shard*")) == ["shard-00000.safetensors", "shard-00001.safetensors"]


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "not a readable safetensors file"),
        (b"\x90\x00\x00\x00\x00\x00\x00\x00{", "not a readable safetensors file"),
        (None, "not named by a store key"),  # a valid safetensors file of someone else's tensors
    ],
)
def test_reopening_skips_a_foreign_shard_and_names_it(tmp_path, content, problem):
    _one_shard(tmp_path)
    stranger = tmp_path / "shard-00001.safetensors"
    if content is None:
        save_file({"weight": torch.ones(2)}, str(stranger))
    else:
        stranger.write_bytes(content)
    with pytest.warns(UserWarning, match=rf"shard-00001\.safetensors.*{problem}.*move it out of the folder"):
        store = DiskStore(tmp_path)
    assert list(store.damaged) == ["shard-00001.safetensors"] and store.keys() == [K0]
    with pytest.raises(KeyError, match=r"damaged shards that may have held it: shard-00001\.safetensors"):
        store.get(K1)
    store.put(K1, torch.ones(1))
    store.flush()  # the next shard never overwrites the damaged one
    assert stranger.exists() and (tmp_path / "shard-00002.safetensors").exists()


def test_reopening_leaves_files_not_named_like_shards_alone(tmp_path):
    _one_shard(tmp_path)
    for name in ("shard-old.safetensors", "shard-1.safetensors", ".shard-00001.safetensors.tmp", "notes.txt"):
        (tmp_path / name).write_bytes(b"not a shard")
    _reopen_add_and_reopen(tmp_path, "shard-00001.safetensors")


def test_shard_numbers_past_five_digits_keep_counting(tmp_path):
    _one_shard(tmp_path)
    (tmp_path / "shard-00000.safetensors").rename(tmp_path / "shard-100000.safetensors")
    _reopen_add_and_reopen(tmp_path, "shard-100001.safetensors")


def _reopen_add_and_reopen(path, next_shard):
    """The store at ``path`` holds K0 alone; a put of K1 goes to ``next_shard`` and is read back."""
    store = DiskStore(path)
    assert store.keys() == [K0]
    store.put(K1, torch.ones(1))
    store.flush()
    assert (path / next_shard).exists()
    assert sorted(DiskStore(path).keys()) == [K0, K1]


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_put_and_put_rows_say_whether_they_replaced_an_entry(kind, tmp_path):
    """Cache's repeat warning reads this answer instead of looking the key up before each put."""
    store = MemoryStore() if kind == "memory" else DiskStore(tmp_path / "s", buffer_bytes=1 << 20)
    x = torch.arange(6.0).reshape(2, 3)
    halves = [("uncond", slice(0, 1)), ("cond", slice(1, 2))]
    assert store.put(("a", 0, None), x) is False
    assert store.put(("a", 0, None), x + 1) is True
    assert store.put(("a", 0, None, 0), x) is True  # invocation 0 is the three-part key
    assert store.put_rows(("b", 0, None), x, halves) is None
    assert store.put_rows(("b", 0, None), x + 1, halves) == ("b", 0, "uncond")
    assert store.put(("b", 1, "cond"), x[1:]) is False
    assert store.put_rows(("b", 1, None), x, halves) == ("b", 1, "cond")  # the branch key that was held
    assert store.put_rows(("b", 1, None, 0), x, halves) == ("b", 1, "uncond")  # invocation 0: the same keys
    assert torch.equal(store.get(("b", 0, "cond")), x[1:] + 1)
    assert sorted(store.keys()) == [
        ("a", 0, None),
        ("b", 0, "cond"),
        ("b", 0, "uncond"),
        ("b", 1, "cond"),
        ("b", 1, "uncond"),
    ]


def test_cache_warns_once_when_a_second_call_replaces_a_cfg_batch():
    sd = tiny_models.sd_pipeline()
    cache = Cache()

    def call(guidance_scale: float = 3.0) -> None:
        sd(["a red circle"], num_inference_steps=2, guidance_scale=guidance_scale, output_type="pt")

    with attach(sd, {"unet.mid_block": cache}):
        call(guidance_scale=1.0)  # no CFG: only cond rows
        with pytest.warns(UserWarning, match=r"replaced what it held for \('unet.mid_block', 0, 'cond'\)") as seen:
            call()  # the uncond key is new, the cond key replaced: the warning names the cond key
    assert len([w for w in seen if "replaced" in str(w.message)]) == 1
    assert sorted(k[2] for k in cache.keys()) == ["cond", "cond", "uncond", "uncond"]


def test_a_branch_named_twice_is_refused_and_interleaved_class_labels_are_unlabelled():
    """Two row blocks under one branch name would be stored under one key (one block kept): a
    declared layout must name each branch once, and interleaved DiT class labels leave the rows
    unlabelled, with a warning, instead of a key that silently holds part of them."""
    with pytest.raises(ValueError, match="names a branch twice"):
        attach(nn.Sequential(nn.Linear(2, 2)), {"0": Cache()}, cfg=("cond", "cond"))
    dit = tiny_models.dit_pipeline().transformer
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([10, 10, 10])
    cache = Cache()
    with attach(dit, {"transformer_blocks.0": cache}), torch.no_grad():
        with pytest.warns(UserWarning, match="interleave the null class"):
            dit(x, timestep=t, class_labels=torch.tensor([1, dit.config.num_embeds_ada_norm, 2]))
        # the next step (another timestep), cond rows first: labelled
        dit(x, timestep=t + 10, class_labels=torch.tensor([1, 2, dit.config.num_embeds_ada_norm]))
    assert sorted(cache.keys(), key=str) == [
        ("transformer_blocks.0", 0, None),
        ("transformer_blocks.0", 1, "cond"),
        ("transformer_blocks.0", 1, "uncond"),
    ]
    assert cache.get("transformer_blocks.0", 1, "cond").shape[0] == 2


def _tiny_ltx():
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(0)
    model = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, num_layers=1, caption_channels=16,
    ).eval()  # fmt: skip
    kw = dict(
        hidden_states=torch.randn(2, 4, 8), encoder_hidden_states=torch.randn(2, 3, 16), timestep=torch.tensor([500, 500]),
        encoder_attention_mask=torch.ones(2, 3), num_frames=1, height=2, width=2,
    )  # fmt: skip
    return model, kw


def test_a_batched_cfg_pass_named_cond_uncond_is_split_and_an_unknown_pass_name_is_unlabelled():
    """LTX, CogVideoX and Mochi run their batched [uncond, cond] call inside cache_context("cond_uncond"):
    its rows split by the layout, not one key named after the context; a pass name that is no branch
    (LTX2's "uncond_stg") leaves the rows unlabelled with a warning."""
    model, kw = _tiny_ltx()
    cache = Cache()
    with attach(model, {"transformer_blocks.0": cache}, cfg=("uncond", "cond")), torch.no_grad():
        with model.cache_context("cond_uncond"):
            model(**kw)
        with pytest.warns(UserWarning, match="'uncond_stg'.*is no CFG branch"), model.cache_context("uncond_stg"):
            model(**{**kw, "timestep": torch.tensor([400, 400])})
    assert sorted(cache.keys(), key=str) == [
        ("transformer_blocks.0", 0, "cond"),
        ("transformer_blocks.0", 0, "uncond"),
        ("transformer_blocks.0", 1, None),
    ]
    assert cache.get("transformer_blocks.0", 0, "cond").shape[0] == 1


def test_session_branch_around_a_batched_cfg_call_is_refused():
    sd = tiny_models.sd_pipeline()
    with attach(sd, {"unet.mid_block": Cache()}) as session, session.branch("cond"):
        with pytest.raises(InterventionError, match=r"session.branch\('cond'\).*batches CFG branches"):
            sd(["a red circle"], num_inference_steps=1, guidance_scale=3.0, output_type="pt")
