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
from pathlib import Path

import pytest
import torch

import hub_cards
from hub_cards import ArtifactError, HubError, check_folder, pull, push, write_card
from interventions.artifacts import check_artifacts
from interventions.sae import SAE
from interventions.steering import SteeringVector
from tests.hub_server import HubServer
from tests.test_artifacts_formats import assert_same_sae, random_sae

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


def make_vector(seed=0) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    directions = {
        "unet.mid_block": torch.randn(8, generator=g),
        ("unet.up_blocks.0:output.0", 3): torch.randn(16, generator=g),
        ("unet.up_blocks.0:output.0", 4): torch.randn(16, generator=g),
    }
    return SteeringVector(
        directions,
        base_model="tiny/unet",
        layout="BCHW",
        method="caa",
        branch="cond",
        default_scale=4.0,
        normalized=True,
    )


def make_repo(root: Path, seed=0) -> Path:
    """An SAE repo (two SAEs, one bf16 jumprelu) + a steering vector, with its card."""
    info = dict(base_model="tiny/unet", layout="BCHW", steps=[0, 1, 2, 7], branch="cond", method="topk-sae")
    random_sae("topk", seed=seed, site="unet.mid_block.attentions.0", dataset="org/prompts", **info).save(
        root / "unet.mid_block.attentions.0"
    )
    info |= dict(layout="BNC", steps=None, branch="all", method="jumprelu-sae", metrics={"fvu": 0.074, "l0": 8.0})
    random_sae("jumprelu", 16, 64, torch.bfloat16, seed + 1, site="unet.up_blocks.1", **info).save(
        root / "unet.up_blocks.1"
    )
    make_vector(seed).save(root / "vectors" / "smile")
    write_card(root, "sae", repo_id="org/saes", datasets=["org/prompts"])
    return root


def same_artifacts(a: Path, b: Path) -> None:
    for sub in ("unet.mid_block.attentions.0", "unet.up_blocks.1"):
        assert_same_sae(SAE.load(a / sub), SAE.load(b / sub))
    va, vb = SteeringVector.load(a / "vectors" / "smile"), SteeringVector.load(b / "vectors" / "smile")
    assert va.directions.keys() == vb.directions.keys()
    assert all(torch.equal(va.directions[k], vb.directions[k]) for k in va.directions)


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
        "| topk-sae | org/prompts |",  # method and training data
        "| jumprelu-sae | - | fvu 0.074, l0 8 |",  # the training report's held-out metrics
    ):
        assert needle in body, needle
    assert 'SAE.from_pretrained("org/saes", "unet.mid_block.attentions.0")' in body


def test_card_snippet_gives_an_object_that_attaches(tmp_path, hub):
    """The card's load snippet, run as written, gives an SAE whose .attach edits a model."""
    root = make_repo(tmp_path / "repo")
    push(root, "org/saes")
    snippet = ModelCard.load(root / "README.md").text.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'sae = SAE.load(pull("org/saes", subfolder="unet.mid_block.attentions.0"))' in snippet
    model = torch.nn.Module()
    model.unet = torch.nn.Module()
    model.unet.mid_block = torch.nn.Module()
    model.unet.mid_block.attentions = torch.nn.ModuleList([torch.nn.Conv2d(8, 8, 1)])
    scope = {"model": model}
    exec(snippet, scope)
    assert isinstance(scope["sae"], SAE) and scope["sae"].info.site == "unet.mid_block.attentions.0"
    conv, x = model.unet.mid_block.attentions[0], torch.randn(1, 8, 4, 4)
    with scope["session"]:
        edited = conv(x)  # SAEEdit without an edit: x + dec(z) - dec(z)
    torch.testing.assert_close(edited, conv(x), rtol=0, atol=1e-5)


def test_card_base_model_that_is_not_a_hub_id_stays_in_the_body(tmp_path):
    v = make_vector()
    v.base_model = "TinyUNet (built from config)"
    v.save(tmp_path / "v")
    write_card(tmp_path, "steering_vector", repo_id="org/v")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model is None and "TinyUNet (built from config)" in card.text
    assert "direction" in card.text and 'vector = SteeringVector.load(pull("org/v", subfolder="v"))' in card.text


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
        same_artifacts(folder, expected)

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
        assert SAE.load(pull("org/env", subfolder="unet.up_blocks.1", cache_dir=cache)).d_sae == 64
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
    same_artifacts(folder, root)

    # HF_HUB_OFFLINE=1 (read by huggingface_hub at import, so set on its constants too)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    folder = pull("org/saes", cache_dir=cache, subfolder="vectors/smile")
    assert SteeringVector.load(folder).method == "caa"
    back = TinyGenerator.from_pretrained("org/gen", cache_dir=cache)
    assert_same(dict(back.state_dict()), dict(model.state_dict()))
    with pytest.raises(HubError, match="not .completely. in the Hub cache and the network is off"):
        pull("org/not-cached", cache_dir=cache)


# -------------------------------------------------------------------------------------------- refusals


def test_repo_with_a_pickle_instead_of_safetensors(tmp_path, hub, cache):
    api = HfApi()
    api.create_repo("org/pickle")
    random_sae(site="s").save(tmp_path / "sae")
    cfg = (tmp_path / "sae" / "cfg.json").read_bytes()
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
        SAE.load(local)


@pytest.mark.parametrize("cut", [10, 200, 1000])
def test_truncated_safetensors(tmp_path, hub, cache, cut):
    folder = tmp_path / "repo" / "sae"
    random_sae(site="s").save(folder)
    weights = folder / "sae_weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - cut])
    with pytest.raises(ArtifactError, match="truncated"):
        SAE.load(folder)
    with pytest.raises(ArtifactError, match="truncated"):
        push(tmp_path / "repo", "org/truncated")
    # published anyway with the plain client: pull refuses it and keeps nothing
    HfApi().create_repo("org/truncated")
    HfApi().upload_folder(folder_path=tmp_path / "repo", repo_id="org/truncated")
    with pytest.raises(ArtifactError, match="truncated"):
        pull("org/truncated", subfolder="sae", cache_dir=cache)
    assert not (cache / "models--org--truncated").exists()  # no blob, snapshot or ref left


def test_corrupt_safetensors(tmp_path):
    folder = tmp_path / "sae"
    random_sae(site="s").save(folder)
    (folder / "sae_weights.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ArtifactError, match="not a safetensors file"):
        SAE.load(folder)
    (folder / "sae_weights.safetensors").write_bytes(b"abc")
    with pytest.raises(ArtifactError, match="truncated or not a safetensors file"):
        SAE.load(folder)
    header = json.dumps({"W_enc": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}).encode()
    (folder / "sae_weights.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
    with pytest.raises(ArtifactError, match=r"data_offsets of .W_enc. is not \[begin, end\]"):
        SAE.load(folder)


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
    assert SteeringVector.load(capsys.readouterr().out.strip()).branch == "cond"

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


# ------------------------------------------------------------------------------------- issue 13, Hub


def test_push_with_an_existing_tag_changes_nothing(tmp_path, hub):
    v1 = make_repo(tmp_path / "v1")
    first = push(v1, "org/saes", tag="v1")
    v2 = make_repo(tmp_path / "v2", seed=5)
    repo = hub.state.repos[("model", "org/saes")]
    before = (dict(repo.commits), dict(repo.branches), dict(repo.tags))
    assert before[2] == {"v1": first.oid}
    with pytest.raises(
        HubError, match=r"org/saes already has the tag 'v1' \(commit [0-9a-f]{12}\); nothing was uploaded"
    ):
        push(v2, "org/saes", tag="v1")
    assert (repo.commits, repo.branches, repo.tags) == before


def test_cli_hub_failures_are_one_line_with_exit_code_2(tmp_path, hub, capsys, monkeypatch):
    from interventions.cli import main

    root = make_repo(tmp_path / "repo")
    assert main(["hub", "push", str(root), "org/cli", "--tag", "v1"]) == 0
    capsys.readouterr()
    cases = {
        "no such repo": ["hub", "pull", "org/missing"],
        "no branch, tag or commit 'nope'": ["hub", "pull", "org/cli", "--revision", "nope"],
        "already has the tag 'v1'": ["hub", "push", str(root), "org/cli", "--tag", "v1"],
        "is not (completely) in the Hub cache and the network is off": [
            "hub", "pull", "org/cli", "--offline", "--cache-dir", str(tmp_path / "empty-cache"),
        ],
        "cannot reach http://127.0.0.1:9 for org/cli@main": ["hub", "pull", "org/cli", "--endpoint", UNREACHABLE],
        "cannot reach http://127.0.0.1:9 for org/other@main": ["hub", "push", str(root), "org/other", "--endpoint", UNREACHABLE],
        "subfolder '../../..' must be a folder inside the repo": ["hub", "pull", "org/cli", "--subfolder", "../../.."],
    }  # fmt: skip
    for needle, argv in cases.items():
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, (argv, err)
        assert err.count("\n") == 1 and err.startswith(f"interventions hub {argv[1]}: "), err


def _upload(repo_id: str, files: dict[str, bytes]) -> None:
    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    for path, data in files.items():
        api.upload_file(path_or_fileobj=data, path_in_repo=path, repo_id=repo_id)


def test_pull_validates_and_a_refused_pull_leaves_nothing(tmp_path, hub, cache):
    random_sae(site="s").save(tmp_path / "sae")
    good_cfg = (tmp_path / "sae" / "cfg.json").read_bytes()
    weights = (tmp_path / "sae" / "sae_weights.safetensors").read_bytes()
    bad_cfg = good_cfg.replace(b'"branch": "all"', b'"branch": "both"')
    _upload("org/bad-cfg", {"sae/cfg.json": bad_cfg, "sae/sae_weights.safetensors": weights, "README.md": b"# x\n"})
    local = tmp_path / "local"
    local.mkdir()
    (local / "mine.txt").write_text("kept")  # what was there before stays
    with pytest.raises(ArtifactError, match="branch' must be one of"):
        pull("org/bad-cfg", local_dir=local, check=check_artifacts)
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*")) == ["mine.txt"]
    with pytest.raises(ArtifactError, match="branch' must be one of"):
        pull("org/bad-cfg", subfolder="sae", cache_dir=cache, check=check_artifacts)
    assert not (cache / "models--org--bad-cfg").exists()
    # a corrupt safetensors (generic check, no format knowledge needed)
    _upload(
        "org/corrupt", {"sae/cfg.json": good_cfg, "sae/sae_weights.safetensors": b"\x10" + bytes(7) + b"{nope}" * 3}
    )
    with pytest.raises(ArtifactError, match="is not a safetensors file"):
        pull("org/corrupt", local_dir=tmp_path / "local2")
    assert not (tmp_path / "local2").exists()
    # the same repo with a good config pulls and loads
    _upload("org/bad-cfg", {"sae/cfg.json": good_cfg})
    assert SAE.load(pull("org/bad-cfg", subfolder="sae", cache_dir=cache, check=check_artifacts)).info.site == "s"


def test_push_without_a_card_writes_one_from_the_metadata(tmp_path, hub):
    root = tmp_path / "repo"
    random_sae(site="unet.mid_block", base_model="tiny/unet", method="topk-sae", dataset="org/prompts").save(
        root / "unet.mid_block"
    )
    with pytest.warns(UserWarning, match="had no README.md: wrote a card"):
        push(root, "org/nocard")
    card = ModelCard(hub.files("org/nocard")["README.md"].decode())
    assert card.data.base_model == "tiny/unet" and card.data.datasets == ["org/prompts"]
    assert 'SAE.load(pull("org/nocard", subfolder="unet.mid_block"))' in card.text and "topk-sae" in card.text


def test_files_are_written_with_the_users_umask(tmp_path):
    old = os.umask(0o027)
    try:
        random_sae(site="s").save(tmp_path / "sae")
        make_vector().save(tmp_path / "v")
        write_card(tmp_path, "sae", repo_id="org/x")
    finally:
        os.umask(old)
    for path in (
        "sae/cfg.json",
        "sae/sae_weights.safetensors",
        "v/cfg.json",
        "v/steering_vector.safetensors",
        "README.md",
    ):
        assert (tmp_path / path).stat().st_mode & 0o777 == 0o640, path


def test_cli_push_then_pull_of_an_sae_a_vector_and_a_gan_generator(tmp_path, hub, capsys):
    """Issue 13's acceptance: bit-identical round trips through the CLI, cards that ModelCard.load reads."""
    from interventions.cli import main
    from recipes.gan.hub import load_generator, save_generator
    from recipes.gan.models import N_CONDITIONS, Generator

    sae = random_sae("jumprelu", 16, 64, torch.bfloat16, 3, site="unet.up_blocks.1", base_model="tiny/unet")
    sae.save(tmp_path / "sae" / "unet.up_blocks.1")  # no card: push writes one
    vector = make_vector(4)
    vector.save(tmp_path / "vector" / "smile")
    write_card(tmp_path / "vector", "steering_vector", repo_id="org/vector")
    torch.manual_seed(0)
    generator = Generator(noise_dim=4, width=2, shape=(8, 6))
    save_generator(generator, tmp_path / "gan", metrics={"ws_channels": 0.5}, repo_id="org/gan")
    for name in ("sae", "vector", "gan"):
        assert main(["hub", "push", str(tmp_path / name), f"org/{name}", "--tag", "v1"]) == 0, capsys.readouterr().err
        assert (
            main(["hub", "pull", f"org/{name}", "--revision", "v1", "--local-dir", str(tmp_path / f"{name}-back")]) == 0
        )
        back = tmp_path / f"{name}-back"
        assert local_files(tmp_path / name).items() <= local_files(back).items(), name  # bit-identical files
        ModelCard.load(back / "README.md")
    capsys.readouterr()
    assert_same_sae(SAE.load(tmp_path / "sae-back" / "unet.up_blocks.1"), sae)
    v = SteeringVector.load(tmp_path / "vector-back" / "smile")
    assert all(torch.equal(v.directions[k], vector.directions[k]) for k in vector.directions)
    gan = load_generator(tmp_path / "gan-back")
    assert_same(dict(gan.state_dict()), dict(generator.state_dict()))
    conditions = torch.randn(3, N_CONDITIONS)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(gan.sample(conditions, g1), generator.eval().sample(conditions, g2))


@pytest.mark.parametrize("lfs", [False, True], ids=["regular", "lfs"])
def test_pull_with_the_clients_default_transfer_path(tmp_path, monkeypatch, cache, lfs):
    """The Hub stores *.safetensors as LFS objects and serves them through a redirect: pull works with
    huggingface_hub's default download path (hf_xet installed), with LFS and without."""
    from huggingface_hub.utils._runtime import is_xet_available

    root = make_repo(tmp_path / "repo")
    with HubServer(lfs=lfs) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        _point_constants(monkeypatch, server.url)
        with monkeypatch.context() as m:
            m.setattr(constants, "HF_HUB_DISABLE_XET", True)  # no Xet server here: the legacy LFS upload
            push(root, "org/lfs", tag="v1")
        stored = server.lfs_paths("org/lfs", "v1")
        expected = {p for p in local_files(root) if p.endswith(".safetensors")} if lfs else set()
        assert stored == expected
        assert is_xet_available() or not lfs  # the default path: hf_xet is what a user has installed
        folder = pull("org/lfs", revision="v1", cache_dir=cache, check=check_artifacts)
        local = pull("org/lfs", revision="v1", local_dir=tmp_path / "local", check=check_artifacts)
        for got in (folder, local):
            assert local_files(root).items() <= local_files(got).items()
            same_artifacts(got, root)
        gets = [p for m, p in server.log if m == "GET" and p.startswith("/lfs-objects/")]
        assert len(gets) == (2 * len(expected) if lfs else 0)


def test_card_shows_the_training_reports_metrics_data_set_and_method(tmp_path):
    from interventions.sae_train import TrainConfig, train_sae

    x = torch.randn(4096, 8, generator=torch.Generator().manual_seed(0)) @ torch.randn(8, 8)
    config = TrainConfig(steps=40, batch_size=256, lr=3e-3, eval_tokens=512, progress=False)
    sae, report = train_sae(x, d_sae=32, kind="topk", k=4, site="unet.mid_block", config=config)
    sae.info.dataset = "org/prompts"
    sae.save(tmp_path / "unet.mid_block", report=report)
    write_card(tmp_path, "sae", repo_id="org/trained")
    card = ModelCard.load(tmp_path / "README.md")
    row = next(line for line in card.text.splitlines() if line.startswith("| `unet.mid_block`"))
    assert f"fvu {report.fvu:.4g}, l0 {report.l0:.4g}, dead_fraction {report.dead_fraction:.4g}" in row
    assert "| topk SAE (interventions.sae_train) | org/prompts |" in row
    assert card.data.datasets == ["org/prompts"]
    assert SAE.load(tmp_path / "unet.mid_block").info.metrics["fvu"] == report.fvu
