"""Hostile artifact folders and repos (issue 14, items 8 and 9, for SAEs, steering vectors and cards).

Real symlinks, real oversized headers, real deeply nested JSON: nothing is read or written outside
an artifact's folder, and every refusal is an ArtifactError that says what was wrong.
"""

from __future__ import annotations

import json
import struct
import time

import pytest
import torch

from hub_cards import ArtifactError, pull, push, write_card
from hub_cards.layouts import MAX_HEADER_BYTES, MAX_JSON_DEPTH
from interventions.sae import SAE
from interventions.steering import SteeringVector
from tests.hub_server import HubServer
from tests.test_artifacts_formats import random_sae


@pytest.fixture
def hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


# ------------------------------------------------------------------------------------------- symlinks


def test_loaders_refuse_a_weights_symlink_that_leads_outside(tmp_path):
    random_sae(site="s").save(tmp_path / "elsewhere")
    random_sae(site="s", seed=1).save(tmp_path / "sae")
    weights = tmp_path / "sae" / "sae_weights.safetensors"
    weights.unlink()
    weights.symlink_to(tmp_path / "elsewhere" / "sae_weights.safetensors")
    with pytest.raises(ArtifactError, match=r"sae_weights.safetensors is a symlink to .*elsewhere.*, outside"):
        SAE.load(tmp_path / "sae")
    cfg = tmp_path / "sae" / "cfg.json"
    weights.unlink()
    (tmp_path / "sae" / "real.safetensors").write_bytes(
        (tmp_path / "elsewhere" / "sae_weights.safetensors").read_bytes()
    )
    weights.symlink_to("real.safetensors")  # a link inside the folder is fine
    assert SAE.load(tmp_path / "sae").info.site == "s"
    cfg.rename(tmp_path / "cfg.json")
    cfg.symlink_to(tmp_path / "cfg.json")
    with pytest.raises(ArtifactError, match="cfg.json is a symlink to"):
        SAE.load(tmp_path / "sae")


def test_push_refuses_symlinks_that_lead_outside(tmp_path, hub):
    (tmp_path / "secret.json").write_text('{"token": "hf_secret"}')
    random_sae(site="s").save(tmp_path / "repo" / "sae")
    (tmp_path / "repo" / "notes.json").symlink_to(tmp_path / "secret.json")
    with pytest.raises(ArtifactError, match=r"symlinks that lead outside it \(notes.json -> .*secret.json\)"):
        push(tmp_path / "repo", "org/links")
    assert not hub.state.repos and not [m for m, _ in hub.log if m == "POST"]


def test_pull_refuses_a_subfolder_outside_the_repo(tmp_path, hub):
    random_sae(site="s").save(tmp_path / "repo" / "sae")
    write_card(tmp_path / "repo", "sae", repo_id="org/x")
    push(tmp_path / "repo", "org/x")
    requests = len(hub.log)
    for bad in ("../../..", "sae/../..", "/etc", "./sae", "sae\\..\\.."):
        with pytest.raises(ArtifactError, match="must be a folder inside the repo"):
            pull("org/x", subfolder=bad, local_dir=tmp_path / "out")
    assert len(hub.log) == requests  # refused before any request
    assert pull("org/x", subfolder="sae/", local_dir=tmp_path / "out") == tmp_path / "out" / "sae"


def test_write_card_and_save_replace_a_planted_symlink_instead_of_writing_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "repo"
    random_sae(site="s").save(folder / "sae")
    (folder / "README.md").symlink_to(victim)
    (folder / "sae" / "cfg.json").unlink()
    (folder / "sae" / "cfg.json").symlink_to(victim)
    random_sae(site="s").save(folder / "sae")
    write_card(folder, "sae", repo_id="org/x")
    assert victim.read_text() == "precious"
    assert not (folder / "README.md").is_symlink() and "SAE.load" in (folder / "README.md").read_text()
    assert not (folder / "sae" / "cfg.json").is_symlink()


# ------------------------------------------------------------------------------------ bounded parsing


def test_a_huge_safetensors_header_is_refused_unread(tmp_path):
    random_sae(site="s").save(tmp_path / "sae")
    n = MAX_HEADER_BYTES + 1024
    entries = ",".join(f'"t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' for i in range(n // 50))
    header = ("{" + entries + "}").encode().ljust(n)
    (tmp_path / "sae" / "sae_weights.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    start = time.perf_counter()
    with pytest.raises(
        ArtifactError, match=rf"its header claims {len(header)} bytes; interventions reads .* up to {MAX_HEADER_BYTES}"
    ):
        SAE.load(tmp_path / "sae")
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100_000])
def test_deeply_nested_json_is_a_clear_error(tmp_path, depth):
    SteeringVector({"a": torch.ones(2)}).save(tmp_path / "v")
    cfg = json.loads((tmp_path / "v" / "cfg.json").read_text())
    text = json.dumps(cfg)[:-1] + ', "extra": {"x": ' + "[" * depth + "]" * depth + "}}"
    (tmp_path / "v" / "cfg.json").write_text(text)
    with pytest.raises(ArtifactError, match=f"nested deeper than {MAX_JSON_DEPTH} levels"):
        SteeringVector.load(tmp_path / "v")


def test_deeply_nested_safetensors_header_is_a_clear_error(tmp_path):
    random_sae(site="s").save(tmp_path / "sae")
    header = ('{"__metadata__": {"x": ' + "[" * 50_000 + "]" * 50_000 + "}}").encode()
    (tmp_path / "sae" / "sae_weights.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(ArtifactError, match="not a safetensors file: its header: nested deeper than"):
        SAE.load(tmp_path / "sae")


def test_model_loader_refuses_outside_weights_and_hostile_configs(tmp_path):
    from tests.test_hub import TinyGenerator

    TinyGenerator().save_pretrained(tmp_path / "a")
    TinyGenerator().save_pretrained(tmp_path / "b")
    (tmp_path / "b" / "model.safetensors").unlink()
    (tmp_path / "b" / "model.safetensors").symlink_to(tmp_path / "a" / "model.safetensors")
    with pytest.raises(ArtifactError, match="model.safetensors is a symlink to .*, outside"):
        TinyGenerator.from_pretrained(str(tmp_path / "b"))
    (tmp_path / "a" / "config.json").write_text('{"d_latent": 4, "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ArtifactError, match="nested deeper than"):
        TinyGenerator.from_pretrained(str(tmp_path / "a"))
    (tmp_path / "a" / "config.json").write_text('{"d_latent": NaN}')
    with pytest.raises(ArtifactError, match="d_latent.* is nan"):
        TinyGenerator.from_pretrained(str(tmp_path / "a"))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}, "has dtype 'F99'"),
        ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, r"shape \[-2\]"),
        ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, r"\(F32 \[3\]\) spans bytes 0..8"),
    ],
)
def test_a_safetensors_header_is_checked_entry_by_entry_before_loading(tmp_path, entry, message):
    random_sae(site="s").save(tmp_path / "sae")
    header = json.dumps({"W_enc": entry}).encode()
    (tmp_path / "sae" / "sae_weights.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(ArtifactError, match=message):
        SAE.load(tmp_path / "sae")
