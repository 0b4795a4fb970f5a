"""load_sparsify: SAE folders written by the real eai-sparsify 1.3.3 (tests/sparsify_folders, made by
tests/sparsify_write.py in its own virtual environment) load with sparsify's outputs, or are refused
by name. With $SPARSIFY_PYTHON (an interpreter that has eai-sparsify) the folders are rewritten live."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hub_cards import ArtifactError
from interventions import InterventionError
from interventions.sae_sparsify import load_sparsify

FOLDERS = Path(__file__).parent / "sparsify_folders"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    python = os.environ.get("SPARSIFY_PYTHON")
    if not python:
        return FOLDERS
    out = tmp_path_factory.mktemp("sparsify")
    subprocess.run([python, str(Path(__file__).parent / "sparsify_write.py"), str(out)], check=True)
    return out


@pytest.mark.parametrize("name", ["topk", "topk_num_latents_bf16", "saeuron"])
def test_outputs_equal_sparsify_own(folders, name):
    sae = load_sparsify(folders / name)
    ref = load_file(str(folders / name / "expected.safetensors"))
    assert sae.kind == "topk" and sae.W_enc.dtype == ref["x"].dtype and sae.info.site == name
    with torch.no_grad():
        z = sae.encode(ref["x"])
        torch.testing.assert_close(z, ref["latents"], rtol=0, atol=0 if z.dtype == torch.float32 else 1e-2)
        torch.testing.assert_close(
            sae.decode(z), ref["sae_out"], rtol=1e-5, atol=1e-5 if z.dtype == torch.float32 else 3e-2
        )


def test_sizes_come_from_the_config(folders):
    assert (load_sparsify(folders / "topk").d_sae, load_sparsify(folders / "topk").k) == (64, 4)
    bf = load_sparsify(folders / "topk_num_latents_bf16")
    assert (bf.d_in, bf.d_sae, bf.k) == (16, 48, 6)


@pytest.mark.parametrize(
    "name, words",
    [
        ("skip_connection", "skip_connection=True"),
        ("transcoder", "transcode=True"),
        ("groupmax", "activation='groupmax'"),
        ("no_decoder", "no W_dec"),
        ("saeuron_input_unit_norm", "input_unit_norm=True"),
    ],
)
def test_settings_it_cannot_compute_are_refused_by_name(folders, name, words):
    with pytest.raises(ArtifactError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_sparsify(folders / name)


def _copy(folders: Path, tmp_path: Path, change) -> Path:
    folder = tmp_path / "unet.up_blocks.1.attentions.1"
    shutil.copytree(folders / "topk", folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    change(cfg)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda c: c.update(new_setting=1), "unknown sparsify setting"),
        (lambda c: c.update(k=65), "k=65 exceeds the 64 latents"),
        (lambda c: c.update(d_in=8), "do not match cfg.json"),
        (lambda c: c.update(expansion_factor=2), "do not match cfg.json"),
        (lambda c: c.pop("d_in"), "'d_in' must be an integer"),
    ],
)
def test_bad_configs_are_refused(folders, tmp_path, change, words):
    with pytest.raises(ArtifactError, match=words):
        load_sparsify(_copy(folders, tmp_path, change))


def test_pickles_are_refused(folders, tmp_path):
    folder = _copy(folders, tmp_path, lambda c: None)
    (folder / "sae.safetensors").rename(folder / "sae.pt")
    with pytest.raises(ArtifactError, match="pickle"):
        load_sparsify(folder)


def test_site_from_the_hookpoint_folder_and_attach(folders, tmp_path):
    """The folder name is the hookpoint; a given site and layout win; attach refuses another width."""
    folder = _copy(folders, tmp_path, lambda c: None)
    assert load_sparsify(folder).info.site == "unet.up_blocks.1.attentions.1"
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 1), torch.nn.Conv2d(16, 8, 1))
    sae = load_sparsify(folder, site="0", layout="BCHW")
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad(), sae.attach(model, edit=lambda z, ctx: z):  # an edit that changes nothing
        y = model(x)
    torch.testing.assert_close(y, model(x))
    wrong = load_sparsify(folder, site="1", layout="BCHW")
    with pytest.raises(InterventionError, match="expects 16"), wrong.attach(model, edit=lambda z, ctx: z):
        model(x)
