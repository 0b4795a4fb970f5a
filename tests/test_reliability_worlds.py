"""Untrusted world checkpoints (issue 14, items 6, 7, 8, 10): the tones and shapes loaders and the
shapes evaluators read only safetensors and JSON inside their folder, and check every config
against the tensors the folder holds before building anything."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from hub_cards import ArtifactError
from recipes.worlds import shapes_eval, shapes_model, tones_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tones(tmp_path):
    return shutil.copytree(tones_model.CHECKPOINT_DIR, tmp_path / "tones")


@pytest.fixture
def shapes(tmp_path):
    return shutil.copytree(shapes_model.CHECKPOINT_DIR, tmp_path / "shapes")


def _edit(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    "theta, message",
    [
        ("NaN", r"rope_theta is nan"),
        ('"100"', r"'rope_theta' must be a finite positive number, got '100'"),
        ("-1", r"'rope_theta' must be a finite positive number, got '-1'"),
        ("true", r"got 'True'"),
    ],
)
def test_tones_rope_theta_must_be_a_finite_positive_number(tones, theta, message):
    text = (tones / "sampling.json").read_text()
    (tones / "sampling.json").write_text(text.replace('"rope_theta": 100.0', f'"rope_theta": {theta}'))
    with pytest.raises(ArtifactError, match=rf"sampling.json.*{message}"):
        tones_model.load_model(tones)


def test_tones_loader_never_unpickles(tones, monkeypatch):
    weights = tones / "transformer" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(weights)), tones / "transformer" / "diffusion_pytorch_model.bin")
    weights.unlink()
    unpickled = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: unpickled.append(a) or {})
    with pytest.raises(
        ArtifactError,
        match=r"diffusion_pytorch_model.safetensors: expected safetensors weights, "
        r"it holds only pickles \(diffusion_pytorch_model.bin\)",
    ):
        tones_model.load_model(tones)
    assert unpickled == []


def test_tones_config_asking_for_more_than_its_weights_is_refused_unbuilt(tones):
    _edit(tones / "transformer" / "config.json", attention_head_dim=200_000)
    start = time.perf_counter()
    with pytest.raises(
        ArtifactError, match=r"transformer/config.json does not fit diffusion_pytorch_model.safetensors"
    ):
        tones_model.load_model(tones)
    assert time.perf_counter() - start < 10


def test_tones_weights_symlinked_outside_are_refused(tones, tmp_path):
    weights = tones / "text_encoder" / "model.safetensors"
    weights.rename(tmp_path / "elsewhere.safetensors")
    weights.symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(ArtifactError, match=r"symlinks that lead outside it \(text_encoder/model.safetensors -> "):
        tones_model.load_model(tones)


def test_shapes_unet_with_huge_channels_is_refused_unbuilt(shapes):
    _edit(shapes / "unet" / "config.json", block_out_channels=[64_000, 64])
    start = time.perf_counter()
    with pytest.raises(ArtifactError, match=r"unet/config.json does not fit diffusion_pytorch_model.safetensors"):
        shapes_model.load_pipeline(shapes)
    assert time.perf_counter() - start < 10


def test_shapes_scheduler_class_must_be_a_scheduler(shapes):
    _edit(shapes / "scheduler" / "scheduler_config.json", _class_name="StableDiffusionPipeline")
    with pytest.raises(ArtifactError, match=r"scheduler_config.json: '_class_name' 'StableDiffusionPipeline' is not a"):
        shapes_model.load_pipeline(shapes)


def _evaluators(shapes, **configs):
    path = shapes / "evaluators" / "config.json"
    cfg = json.loads(path.read_text())
    cfg["configs"].update(configs)
    path.write_text(json.dumps(cfg))
    return shapes / "evaluators"


@pytest.mark.parametrize("name", ["../outside", "/tmp/outside", ".hidden"])
def test_evaluator_names_stay_inside_the_folder(shapes, tmp_path, name):
    folder = _evaluators(shapes, **{name: {"num_classes": 4, "width": 16, "hidden": 64}})
    save_file(load_file(str(folder / "shape.safetensors")), str(shapes / "outside.safetensors"))
    with pytest.raises(ArtifactError, match=rf"evaluators/config.json: '{name}' is not a plain name"):
        shapes_eval.load_evaluators(folder)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"num_classes": 4, "width": 200_000, "hidden": 64}, r"config.json does not fit shape.safetensors"),
        ({"num_classes": 4, "width": 8, "hidden": 64}, r"config.json does not fit shape.safetensors"),
        ({"num_classes": 4, "width": 16, "hidden": 64, "extra": [1, 2]}, r"must hold only num_classes, width, hidden"),
        ({"num_classes": 4.0, "width": 16, "hidden": 64}, r"'num_classes' must be a positive integer, got '4.0'"),
    ],
)
def test_evaluator_configs_are_checked_against_their_weights(shapes, config, message):
    folder = _evaluators(shapes, shape=config)
    start = time.perf_counter()
    with pytest.raises(ArtifactError, match=message):
        shapes_eval.load_evaluators(folder)
    assert time.perf_counter() - start < 5


def test_evaluator_weights_symlinked_outside_or_damaged_are_refused_by_name(shapes, tmp_path):
    folder = shapes / "evaluators"
    (folder / "style.safetensors").rename(tmp_path / "style.safetensors")
    (folder / "style.safetensors").symlink_to(tmp_path / "style.safetensors")
    with pytest.raises(ArtifactError, match=r"symlinks that lead outside it \(style.safetensors -> "):
        shapes_eval.load_evaluators(folder)
    (folder / "style.safetensors").unlink()
    (folder / "style.safetensors").write_bytes((tmp_path / "style.safetensors").read_bytes()[:-100])
    with pytest.raises(ArtifactError, match=r"evaluators/style.safetensors is truncated"):
        shapes_eval.load_evaluators(folder)


def test_save_evaluators_replaces_planted_symlinks(shapes, tmp_path):
    evaluators = shapes_eval.load_evaluators(shapes / "evaluators")
    out = tmp_path / "out"
    out.mkdir()
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    for name in ("config.json", "shape.safetensors"):
        (out / name).symlink_to(precious)
    shapes_eval.save_evaluators(evaluators, out)
    assert precious.read_text() == "keep me" and not any(p.is_symlink() for p in out.iterdir())
    assert shapes_eval.load_evaluators(out).keys() == evaluators.keys()
