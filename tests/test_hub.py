"""hub_cards: layouts, cards, and publishing for real against a local Hub (tests/hub_server.py).

The real ``huggingface_hub`` client pushes to and pulls from a stdlib HTTP server on 127.0.0.1;
offline loading reads a Hub cache built by hand; nothing here reaches the internet.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hub_cards
from hub_cards import (
    ArtifactError,
    check_folder,
    load_sae,
    load_steering_vector,
    pull,
    push,
    save_sae,
    save_steering_vector,
    write_card,
)
from tests.hub_server import HubServer

huggingface_hub = pytest.importorskip("huggingface_hub")
from huggingface_hub import HfApi, ModelCard, constants  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: any request that escapes fails at once


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def hf_env(tmp_path, monkeypatch):
    """A private HF_HOME and token, telemetry and progress bars off, the Hub unreachable by default."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)
    # huggingface_hub read these at import; the mixin has no endpoint argument.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    _point_constants(monkeypatch, UNREACHABLE)


def _point_constants(monkeypatch, url: str) -> None:
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")


@pytest.fixture
def hub(monkeypatch):
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        _point_constants(monkeypatch, server.url)
        yield server


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


class TinyGenerator(torch.nn.Module, hub_cards.ModelHubMixin, tags=["generator"]):
    """A trained-model stand-in: config.json from the constructor, weights in model.safetensors."""

    def __init__(self, d_latent: int = 4, d_out: int = 6, hidden: int = 8):
        super().__init__()
        self.d_latent, self.d_out = d_latent, d_out
        self.net = torch.nn.Sequential(
            torch.nn.Linear(d_latent, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, d_out)
        )
        self.register_buffer("scale", torch.tensor([1.5], dtype=torch.float64))

    def forward(self, z):
        return self.net(z) * self.scale


def echo_recipe(argv: list[str]) -> int:
    print(argv)
    return 3


# ------------------------------------------------------------------------------------------- builders


def sae_tensors(d_in=8, d_sae=32, dtype=torch.float32, jumprelu=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = {
        "W_enc": torch.randn(d_in, d_sae, generator=g),
        "W_dec": torch.randn(d_sae, d_in, generator=g),
        "b_enc": torch.randn(d_sae, generator=g),
        "b_dec": torch.randn(d_in, generator=g),
    }
    if jumprelu:
        t["threshold"] = torch.rand(d_sae, generator=g)
    return {k: v.to(dtype) for k, v in t.items()}


def sae_cfg(arch="topk", site="unet.mid_block.attentions.0", **meta):
    cfg = {
        "architecture": arch,
        "metadata": {
            "site": site,
            "base_model": "tiny/unet",
            "layout": "BCHW",
            "steps": [0, 1, 2, 7],
            "branch": "cond",
            "method": f"{arch}-sae",
            **meta,
        },
    }
    if arch in ("topk", "batchtopk"):
        cfg["k"] = 4
    return cfg


def sv_tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "direction.unet.mid_block": torch.randn(8, generator=g),
        "direction.unet.up_blocks.0:output.0.step3": torch.randn(16, generator=g),
        "direction.unet.up_blocks.0:output.0.step4": torch.randn(16, generator=g),
    }


SV_CFG = {
    "base_model": "tiny/unet",
    "sites": ["unet.mid_block", "unet.up_blocks.0:output.0"],
    "layout": "BCHW",
    "method": "caa",
    "default_scale": 4.0,
    "normalized": True,
    "steps": [3, 4],
    "branch": "cond",
}


def make_repo(root: Path, seed=0) -> Path:
    """An SAE repo (two SAEs, one bf16 jumprelu) + a steering vector, with its card."""
    save_sae(root / "unet.mid_block.attentions.0", cfg=sae_cfg("topk"), tensors=sae_tensors(seed=seed))
    save_sae(
        root / "unet.up_blocks.1",
        cfg=sae_cfg("jumprelu", site="unet.up_blocks.1", layout="BNC", steps=None, branch="all"),
        tensors=sae_tensors(16, 64, torch.bfloat16, jumprelu=True, seed=seed + 1),
    )
    save_steering_vector(root / "vectors" / "smile", cfg=SV_CFG, tensors=sv_tensors(seed))
    write_card(root, "sae", repo_id="org/saes", datasets=["org/prompts"])
    return root


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of ``t`` (so NaN == NaN and -0.0 != 0.0)."""
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(view)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(bits(a[k]), bits(b[k])), k


def local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def fill_cache(cache: Path, repo_id: str, files: dict[str, bytes], commit: str, refs=("main",)) -> None:
    """The Hub cache layout by hand: blobs/<sha256>, snapshots/<commit>/<path> -> blob, refs/<name>."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    for path, data in files.items():
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = storage / "snapshots" / commit / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (storage / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)  # no trailing newline, as the Hub client writes it


# -------------------------------------------------------------------------------------- local layouts


def test_sae_layout_is_saelens_6(tmp_path):
    folder = save_sae(tmp_path / "sae", cfg=sae_cfg("batchtopk"), tensors=sae_tensors())
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    raw = json.loads((folder / "cfg.json").read_text())
    # SAELens has no inference class for batchtopk: per-token top-k at inference is its "topk".
    assert raw["architecture"] == "topk" and raw["k"] == 4
    assert (raw["d_in"], raw["d_sae"], raw["dtype"], raw["device"]) == (8, 32, "float32", "cpu")
    assert raw["apply_b_dec_to_input"] is True
    assert raw["normalize_activations"] == raw["reshape_activations"] == "none"
    meta = raw["metadata"]
    assert meta["sae_lens_version"] == hub_cards.SAE_LENS_VERSION
    assert meta["hook_name"] == meta["site"] == "unet.mid_block.attentions.0"
    assert meta["model_name"] == meta["base_model"] == "tiny/unet"
    assert meta["sdk_version"] and meta["layout"] == "BCHW" and meta["steps"] == [0, 1, 2, 7]
    cfg, tensors = load_sae(folder)
    assert cfg["architecture"] == "batchtopk" and "interventions_architecture" not in cfg["metadata"]
    assert_same(tensors, sae_tensors())


def test_steering_vector_layout(tmp_path):
    folder = save_steering_vector(tmp_path / "sv", cfg=SV_CFG, tensors=sv_tensors())
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "steering_vector.safetensors"]
    cfg, tensors = load_steering_vector(folder)
    assert {k: cfg[k] for k in SV_CFG} == SV_CFG and cfg["sdk_version"]
    assert_same(tensors, sv_tensors())


def test_card_metadata_and_body(tmp_path):
    root = make_repo(tmp_path / "repo")
    card = ModelCard.load(root / "README.md")
    assert card.data.base_model == "tiny/unet"
    assert card.data.datasets == ["org/prompts"]
    assert card.data.library_name == "interventions" and card.data.license == "apache-2.0"
    assert {"interventions", "sparse-autoencoder", "saelens"} <= set(card.data.tags)
    body = card.text
    for needle in (
        "`unet.mid_block.attentions.0`",
        "`BCHW`",
        "0-2, 7",
        "| cond |",
        "unet.up_blocks.1",
        "cond and uncond",
    ):
        assert needle in body, needle
    snippet = body.split("```python\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(snippet) == 3 and 'pull("org/saes"' in snippet[1]
    assert 'SAE.from_pretrained("org/saes", "unet.mid_block.attentions.0")' in body


def test_card_base_model_that_is_not_a_hub_id_stays_in_the_body(tmp_path):
    save_steering_vector(
        tmp_path / "v", cfg={**SV_CFG, "base_model": "TinyUNet (built from config)"}, tensors=sv_tensors()
    )
    write_card(tmp_path, "steering_vector", repo_id="org/v")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model is None and "TinyUNet (built from config)" in card.text
    assert "direction" in card.text and "load_steering_vector" in card.text


def test_card_needs_saved_artifacts(tmp_path):
    with pytest.raises(ArtifactError, match="save the artifacts before"):
        write_card(tmp_path, "sae", repo_id="org/none")


# ------------------------------------------------------------------------------ publishing, for real


def test_push_tag_pull_bit_for_bit(tmp_path, hub, cache):
    v1 = make_repo(tmp_path / "v1")
    info = push(v1, "org/saes", tag="v1")
    assert info.oid and info.commit_url.startswith(hub.url)
    stored = hub.files("org/saes", "v1")
    assert {k: v for k, v in stored.items() if k != ".gitattributes"} == local_files(v1)

    v2 = make_repo(tmp_path / "v2", seed=10)  # a new version on main; v1 stays where the tag points
    info2 = push(v2, "org/saes", commit_message="v2")
    assert info2.oid != info.oid
    dev = push(v1, "org/saes", revision="dev")  # a branch created on the fly
    assert dev.oid

    for rev, src in (("v1", v1), ("main", v2), (info.oid, v1), ("dev", v2)):
        # "dev" branched from main (v2) and re-uploaded v1's files on top
        expected = v1 if rev == "dev" else src
        folder = pull("org/saes", revision=rev, cache_dir=cache)
        assert local_files(folder) == local_files(expected), rev
        for sub in ("unet.mid_block.attentions.0", "unet.up_blocks.1"):
            cfg, tensors = load_sae(folder / sub)
            cfg0, tensors0 = load_sae(expected / sub)
            assert cfg == cfg0
            assert_same(tensors, tensors0)
        cfg, tensors = load_steering_vector(folder / "vectors" / "smile")
        assert (cfg, sorted(tensors)) == (load_steering_vector(expected / "vectors" / "smile")[0], sorted(sv_tensors()))

    sub = pull("org/saes", revision="v1", subfolder="vectors/smile", cache_dir=tmp_path / "cache2")
    assert sorted(p.name for p in sub.iterdir()) == ["cfg.json", "steering_vector.safetensors"]
    assert not (sub.parents[1] / "unet.up_blocks.1").exists()  # only the subfolder (and README) came down
    refs = HfApi(endpoint=hub.url).list_repo_refs("org/saes")
    assert [t.name for t in refs.tags] == ["v1"] and {b.name for b in refs.branches} == {"main", "dev"}


def test_push_refuses_before_creating_anything(tmp_path, hub):
    root = make_repo(tmp_path / "repo")
    (root / "unet.up_blocks.1" / "extra.pt").write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(ArtifactError, match=r"holds pickles \(unet.up_blocks.1/extra.pt\)"):
        push(root, "org/nope")
    assert not hub.state.repos


def test_push_refuses_every_file_pull_would_not_fetch(tmp_path, hub):
    root = make_repo(tmp_path / "repo")
    (root / "checkpoint.pth.tar").write_bytes(pickle.dumps({"w": 1}))  # a pickle behind a second suffix
    (root / "unet.up_blocks.1" / "run.py").write_text("print('hi')\n")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")  # skipped, as upload_folder skips it
    with pytest.raises(
        ArtifactError, match=r"not safetensors, JSON or markdown \(checkpoint.pth.tar, unet.up_blocks.1/run.py\)"
    ):
        push(root, "org/nope")
    assert not hub.state.repos
    (root / "checkpoint.pth.tar").unlink()
    (root / "unet.up_blocks.1" / "run.py").unlink()
    assert sorted(check_folder(root)["sae"]) == ["unet.mid_block.attentions.0", "unet.up_blocks.1"]


def test_model_mixin_push_tag_pull(tmp_path, hub, cache):
    torch.manual_seed(0)
    model = TinyGenerator(d_latent=3, d_out=5)
    model.push_to_hub(
        "org/gen", model_card_kwargs={"site": "unet.mid_block", "steps": [0, 1, 2], "metrics": "FVU 0.05"}
    )
    HfApi().create_tag("org/gen", tag="v1")
    stored = hub.files("org/gen", "v1")
    assert {"config.json", "model.safetensors", "README.md"} <= set(stored)
    assert json.loads(stored["config.json"]) == {"d_latent": 3, "d_out": 5, "hidden": 8}
    card = ModelCard(stored["README.md"].decode())
    assert card.data.library_name == "interventions" and "generator" in card.data.tags
    assert (
        'TinyGenerator.from_pretrained("org/gen")' in card.text
        and "`unet.mid_block`" in card.text
        and "0-2" in card.text
    )

    back = TinyGenerator.from_pretrained("org/gen", revision="v1", cache_dir=cache)
    assert (back.d_latent, back.d_out) == (3, 5)
    assert_same(dict(back.state_dict()), dict(model.state_dict()))

    # the same model through hub_cards.push: save_pretrained's folder passes check_folder
    model.save_pretrained(tmp_path / "gen")
    assert check_folder(tmp_path / "gen")["safetensors"] == ["model.safetensors"]
    push(tmp_path / "gen", "org/gen2", tag="v1")
    back2 = TinyGenerator.from_pretrained("org/gen2", revision="v1", cache_dir=cache)
    assert_same(dict(back2.state_dict()), dict(model.state_dict()))


def test_model_mixin_refuses_pickled_weights(tmp_path, hub, cache):
    api = HfApi()
    api.create_repo("org/pickled")
    api.upload_file(path_or_fileobj=b'{"d_latent": 3}', path_in_repo="config.json", repo_id="org/pickled")
    api.upload_file(path_or_fileobj=pickle.dumps({"w": 1}), path_in_repo="pytorch_model.bin", repo_id="org/pickled")
    with pytest.raises(ArtifactError, match="loads only safetensors"):
        TinyGenerator.from_pretrained("org/pickled", cache_dir=cache)
    assert not any(p.endswith(".bin") for p in hub.downloaded())
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "pytorch_model.bin").write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(ArtifactError, match=r"holds a pickle \(pytorch_model.bin\)"):
        TinyGenerator.from_pretrained(str(tmp_path / "local"))


def test_endpoint_is_read_from_hf_endpoint_at_call_time(tmp_path, monkeypatch, cache):
    root = make_repo(tmp_path / "repo")
    with HubServer() as server:  # huggingface_hub's constants still point at UNREACHABLE
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        push(root, "org/env")
        assert load_sae(pull("org/env", subfolder="unet.up_blocks.1", cache_dir=cache))[0]["d_sae"] == 64
        monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)
        push(root, "org/env2", endpoint=server.url)  # an explicit endpoint wins
        assert "org/env2" in {r for _, r in server.state.repos}


# -------------------------------------------------------------------------------- offline, from cache


def test_offline_from_prefilled_cache(tmp_path, cache, monkeypatch):
    root = make_repo(tmp_path / "repo")
    model = TinyGenerator(d_latent=2, d_out=3)
    model.save_pretrained(tmp_path / "gen")
    commit, commit2 = "1" * 40, "2" * 40
    fill_cache(cache, "org/saes", local_files(root), commit, refs=("main", "v1"))
    fill_cache(cache, "org/gen", local_files(tmp_path / "gen"), commit2)

    # local_files_only=True, no network at all (the endpoint is the discard port)
    folder = pull("org/saes", revision="v1", cache_dir=cache, local_files_only=True)
    assert folder == cache / "models--org--saes" / "snapshots" / commit
    assert_same(load_sae(folder / "unet.up_blocks.1")[1], load_sae(root / "unet.up_blocks.1")[1])

    # HF_HUB_OFFLINE=1 (read by huggingface_hub at import, so set on its constants too)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    folder = pull("org/saes", cache_dir=cache, subfolder="vectors/smile")
    assert load_steering_vector(folder)[0]["method"] == "caa"
    back = TinyGenerator.from_pretrained("org/gen", cache_dir=cache)
    assert_same(dict(back.state_dict()), dict(model.state_dict()))
    with pytest.raises(Exception, match="(?i)offline|cannot find"):
        pull("org/not-cached", cache_dir=cache)


# -------------------------------------------------------------------------------------------- refusals


def test_repo_with_a_pickle_instead_of_safetensors(tmp_path, hub, cache):
    api = HfApi()
    api.create_repo("org/pickle")
    cfg = json.dumps(sae_cfg()).encode()
    api.upload_file(path_or_fileobj=cfg, path_in_repo="sae/cfg.json", repo_id="org/pickle")
    api.upload_file(
        path_or_fileobj=pickle.dumps({"W_enc": [1.0]}), path_in_repo="sae/sae_weights.pt", repo_id="org/pickle"
    )
    with pytest.raises(ArtifactError, match=r"holds a pickle \(sae/sae_weights.pt\) instead of safetensors"):
        pull("org/pickle", subfolder="sae", cache_dir=cache)
    with pytest.raises(ArtifactError, match="sae_weights.pt"):
        pull("org/pickle", cache_dir=cache)
    assert not any(p.endswith(".pt") for p in hub.downloaded()), hub.downloaded()
    with pytest.raises(ArtifactError, match="no such folder"):
        pull("org/pickle", subfolder="other", cache_dir=cache)

    local = tmp_path / "local"
    local.mkdir()
    (local / "cfg.json").write_bytes(cfg)
    (local / "sae_weights.pt").write_bytes(pickle.dumps({"W_enc": [1.0]}))
    with pytest.raises(ArtifactError, match=r"holds a pickle \(sae_weights.pt\).*never unpickles"):
        load_sae(local)


@pytest.mark.parametrize("cut", [10, 200, 1000])
def test_truncated_safetensors(tmp_path, hub, cache, cut):
    folder = save_sae(tmp_path / "repo" / "sae", cfg=sae_cfg(), tensors=sae_tensors())
    weights = folder / "sae_weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - cut])
    with pytest.raises(ArtifactError, match="truncated"):
        load_sae(folder)
    with pytest.raises(ArtifactError, match="truncated"):
        push(tmp_path / "repo", "org/truncated")
    # published anyway with the plain client: pulling works, loading refuses
    HfApi().create_repo("org/truncated")
    HfApi().upload_folder(folder_path=tmp_path / "repo", repo_id="org/truncated")
    with pytest.raises(ArtifactError, match="truncated"):
        load_sae(pull("org/truncated", subfolder="sae", cache_dir=cache))


def test_corrupt_safetensors(tmp_path):
    folder = save_sae(tmp_path / "sae", cfg=sae_cfg(), tensors=sae_tensors())
    (folder / "sae_weights.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ArtifactError, match="not a safetensors file"):
        load_sae(folder)
    (folder / "sae_weights.safetensors").write_bytes(b"abc")
    with pytest.raises(ArtifactError, match="truncated or not a safetensors file"):
        load_sae(folder)
    header = json.dumps({"W_enc": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}).encode()
    (folder / "sae_weights.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
    with pytest.raises(ArtifactError, match=r"data_offsets of .W_enc. is not \[begin, end\]"):
        load_sae(folder)


def _mutate(path: Path, fn) -> None:
    cfg = json.loads(path.read_text())
    fn(cfg)
    path.write_text(json.dumps(cfg))


BAD_SAE_CFGS = {
    "missing d_sae": (lambda c: c.pop("d_sae"), "missing 'd_sae'"),
    "d_in as str": (lambda c: c.update(d_in="8"), "'d_in' must be int, got str"),
    "d_in as bool": (lambda c: c.update(apply_b_dec_to_input="yes"), "'apply_b_dec_to_input' must be bool"),
    "wrong width": (lambda c: c.update(d_in=9), r"'W_enc' has shape \[8, 32\], expected \[9, 32\]"),
    "old sae_lens": (lambda c: c["metadata"].update(sae_lens_version="5.9.1"), "must be >= 6.0.0"),
    "no metadata": (lambda c: c.pop("metadata"), "missing 'metadata'"),
    "no hook_name": (lambda c: c["metadata"].pop("hook_name"), "missing 'metadata.hook_name'"),
    "unknown arch": (lambda c: c.update(architecture="gated"), "'architecture' must be one of"),
    "topk without k": (lambda c: c.pop("k"), "missing 'k'"),
    "k too big": (lambda c: c.update(k=33), "'k' must be in 1..d_sae=32"),
    "bad dtype": (lambda c: c.update(dtype="float8"), "'dtype' must be one of"),
    "bad steps": (lambda c: c["metadata"].update(steps=["0"]), "'steps' must be a list of step indices"),
    "bad branch": (lambda c: c["metadata"].update(branch="both"), "'branch' must be one of"),
}


@pytest.mark.parametrize("case", sorted(BAD_SAE_CFGS))
def test_bad_sae_cfg(tmp_path, case):
    folder = save_sae(tmp_path / "sae", cfg=sae_cfg(), tensors=sae_tensors())
    mutate, message = BAD_SAE_CFGS[case]
    _mutate(folder / "cfg.json", mutate)
    with pytest.raises(ArtifactError, match=message) as err:
        load_sae(folder)
    assert str(folder) in str(err.value)


def test_bad_sae_cfg_lists_every_problem_and_bad_json(tmp_path):
    folder = save_sae(tmp_path / "sae", cfg=sae_cfg(), tensors=sae_tensors())
    _mutate(folder / "cfg.json", lambda c: (c.pop("d_sae"), c.update(dtype=3)))
    with pytest.raises(ArtifactError) as err:
        load_sae(folder)
    assert "missing 'd_sae'" in str(err.value) and "'dtype' must be str" in str(err.value)
    (folder / "cfg.json").write_text("{oops")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_sae(folder)
    (folder / "cfg.json").unlink()
    with pytest.raises(ArtifactError, match="no cfg.json"):
        load_sae(folder)


def test_save_refuses_what_load_would_refuse(tmp_path):
    with pytest.raises(ArtifactError, match="missing tensor 'threshold'"):
        save_sae(tmp_path / "a", cfg=sae_cfg("jumprelu"), tensors=sae_tensors())
    with pytest.raises(ArtifactError, match="unexpected tensors"):
        save_sae(tmp_path / "b", cfg=sae_cfg(), tensors={**sae_tensors(), "extra": torch.zeros(1)})
    mixed = {**sae_tensors(), "b_dec": torch.zeros(8, dtype=torch.float64)}
    with pytest.raises(ArtifactError, match="differ from cfg dtype"):
        save_sae(tmp_path / "c", cfg=sae_cfg(), tensors=mixed)
    with pytest.raises(ArtifactError, match="missing 'metadata.hook_name'"):
        save_sae(tmp_path / "d", cfg={"architecture": "standard", "metadata": {}}, tensors=sae_tensors())
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    ("cfg", "tensors", "message"),
    [
        ({**SV_CFG, "sites": ["unet.mid_block"]}, sv_tensors(), "is not 'direction.<site>'"),
        (
            {**SV_CFG, "sites": [*SV_CFG["sites"], "unet.down"]},
            sv_tensors(),
            r"no direction tensor for sites \['unet.down'\]",
        ),
        ({**SV_CFG, "steps": [3]}, sv_tensors(), "is for step 4, which is not in the config's steps"),
        (
            SV_CFG,
            {**sv_tensors(), "direction.unet.mid_block.step3": torch.zeros(9)},
            "other directions of site 'unet.mid_block' have",
        ),
        ({**SV_CFG, "default_scale": "4"}, sv_tensors(), "'default_scale' must be float"),
        ({k: v for k, v in SV_CFG.items() if k != "method"}, sv_tensors(), "missing 'method'"),
    ],
)
def test_bad_steering_vector(tmp_path, cfg, tensors, message):
    with pytest.raises(ArtifactError, match=message):
        save_steering_vector(tmp_path / "sv", cfg=cfg, tensors=tensors)
    folder = save_steering_vector(tmp_path / "ok", cfg=SV_CFG, tensors=sv_tensors())
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "steering_vector.safetensors"))
    _mutate(folder / "cfg.json", lambda c: (c.clear(), c.update({**cfg, "sdk_version": "0"})))
    with pytest.raises(ArtifactError, match=message):
        load_steering_vector(folder)


def test_steering_vector_cfg_missing_branch(tmp_path):
    folder = save_steering_vector(tmp_path / "sv", cfg=SV_CFG, tensors=sv_tensors())
    _mutate(folder / "cfg.json", lambda c: c.pop("branch"))
    with pytest.raises(ArtifactError, match="missing 'branch'"):
        load_steering_vector(folder)


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


def _random(shape, dtype, seed, specials):
    t = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)
    if specials and t.numel() >= 4:
        flat = t.view(-1)
        flat[:4] = torch.tensor([float("nan"), float("inf"), -0.0, float("-inf")], dtype=torch.float64).to(dtype)
    return t


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arch=st.sampled_from(["standard", "topk", "batchtopk", "jumprelu"]),
    d_in=st.integers(1, 24),
    d_sae=st.integers(1, 48),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
    specials=st.booleans(),
    site=site_names,
    steps=st.none() | st.lists(st.integers(0, 999), max_size=6),
    branch=st.sampled_from([None, "cond", "uncond", "all"]),
    extra=st.dictionaries(names.map(lambda s: "x_" + s), meta_values, max_size=3),
)
def test_sae_save_load_bit_identical(arch, d_in, d_sae, dtype, seed, specials, site, steps, branch, extra):
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    if arch == "jumprelu":
        shapes["threshold"] = (d_sae,)
    tensors = {n: _random(s, dtype, seed + i, specials) for i, (n, s) in enumerate(shapes.items())}
    cfg = {
        "architecture": arch,
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": str(dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": bool(seed % 2),
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": "6.5.0",
            "hook_name": site,
            "model_name": "m/" + site,
            "site": site,
            "layout": None,
            "steps": steps,
            "branch": branch,
            "base_model": "m/" + site,
            "method": arch,
            "sdk_version": "0.1.0",
            **extra,
        },
    }
    if arch in ("topk", "batchtopk"):
        cfg["k"] = 1 + seed % d_sae
    with tempfile.TemporaryDirectory() as tmp:
        save_sae(Path(tmp) / site, cfg=cfg, tensors=tensors)
        cfg_back, tensors_back = load_sae(Path(tmp) / site)
    assert cfg_back == cfg
    assert_same(tensors_back, tensors)


@settings(max_examples=20, deadline=None)
@given(
    sites=st.lists(site_names, min_size=1, max_size=3, unique=True),
    dims=st.lists(st.integers(1, 16), min_size=3, max_size=3),
    per_step=st.lists(st.integers(0, 50), max_size=3, unique=True),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
    scale=st.floats(-100, 100, allow_nan=False),
)
def test_steering_vector_save_load_bit_identical(sites, dims, per_step, dtype, seed, scale):
    tensors = {}
    for i, site in enumerate(sites):
        if per_step:
            for step in per_step:
                tensors[f"direction.{site}.step{step}"] = _random((dims[i],), dtype, seed + step, True)
        else:
            tensors[f"direction.{site}"] = _random((dims[i],), dtype, seed + i, True)
    cfg = {
        "base_model": "m/x",
        "sites": sites,
        "layout": "BNC",
        "method": "pca",
        "default_scale": scale,
        "normalized": False,
        "steps": sorted(per_step) or None,
        "branch": "uncond",
        "sdk_version": "0.1.0",
    }
    with tempfile.TemporaryDirectory() as tmp:
        save_steering_vector(tmp, cfg=cfg, tensors=tensors)
        cfg_back, tensors_back = load_steering_vector(tmp)
    assert cfg_back == cfg
    assert_same(tensors_back, tensors)


# --------------------------------------------------------------------------------------------------- CLI


def test_cli_push_pull(tmp_path, hub, capsys):
    from interventions.cli import main

    root = make_repo(tmp_path / "repo")
    assert main(["hub", "push", str(root), "org/cli", "--tag", "v1"]) == 0
    out = capsys.readouterr().out
    assert f"{hub.url}/org/cli/commit/" in out and "tagged v1" in out
    local = tmp_path / "pulled"
    assert main(["hub", "pull", "org/cli", "--revision", "v1", "--local-dir", str(local)]) == 0
    assert Path(capsys.readouterr().out.strip()) == local.resolve()
    assert local_files(root).items() <= local_files(local).items()
    assert main(["hub", "pull", "org/cli", "--subfolder", "vectors/smile", "--cache-dir", str(tmp_path / "c")]) == 0
    assert load_steering_vector(capsys.readouterr().out.strip())[0]["branch"] == "cond"

    (root / "model.ckpt").write_bytes(b"pickled")
    assert main(["hub", "push", str(root), "org/cli"]) == 2
    assert "holds pickles (model.ckpt)" in capsys.readouterr().err


def test_cli_run_lists_recipes(capsys, monkeypatch):
    from interventions import cli

    assert cli.main(["run"]) == 0
    listed = capsys.readouterr().out
    assert "sdi_gan" in listed and "expertsim" in listed
    monkeypatch.setitem(cli.RECIPES, "echo", ("tests.test_hub:echo_recipe", "prints its arguments"))
    assert cli.main(["run"]) == 0
    assert "echo" in capsys.readouterr().out
    assert cli.main(["run", "echo", "--x", "1"]) == 3
    assert "['--x', '1']" in capsys.readouterr().out
    assert cli.main(["run", "nope"]) == 2


# -------------------------------------------------------------------------------------------- layering


def test_hub_cards_is_a_light_leaf():
    code = "import sys, hub_cards\nheavy = [m for m in ('huggingface_hub', 'torch', 'safetensors', 'interventions', 'recipes') if m in sys.modules]\nassert not heavy, heavy\n"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    for path in (ROOT / "hub_cards").rglob("*.py"):
        text = path.read_text()
        assert "import interventions" not in text and "from interventions" not in text, path
        assert "import recipes" not in text and "from recipes" not in text, path
        assert "torch.load" not in text and "import pickle" not in text, path
    # the CLI imports hub_cards only when a hub command runs
    tree = ast.parse((ROOT / "interventions" / "cli.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top for a in n.names] + [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not any(m.startswith(("hub_cards", "huggingface_hub")) for m in names), names
