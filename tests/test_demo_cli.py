"""``interventions demo``'s command line: bad input is one line on stderr with exit code 2 before
any model loads, and ``--model`` runs the same steps on a Stable Diffusion checkpoint folder
(a tiny one built here, judged by a tiny CLIP: the code path of a real SD 1.5 on a GPU)."""

import json
import subprocess
import sys
import time

import pytest
import torch

from interventions.cli import main

torch.set_num_threads(1)


def _refused(capsys, *args):
    code = main(["demo", *args])
    err = capsys.readouterr()
    assert code == 2 and err.out == ""
    lines = err.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interventions demo: "), err.err
    return lines[0]


def test_bad_input_is_one_line_and_exit_code_2(capsys, tmp_path):
    assert "unknown world 'moon'; choose one of: shapes, tones, all" in _refused(capsys, "--world", "moon")
    missing = tmp_path / "no-such-checkpoint"
    line = _refused(capsys, "--model", str(missing))
    assert str(missing) in line and "does not exist" in line
    assert "does not exist" in _refused(capsys, "--model", "./sd15")
    assert "does not exist" in _refused(capsys, "--model", "not-a-hub-id")
    assert "with --world shapes or --world all" in _refused(capsys, "--model", str(tmp_path), "--world", "tones")
    (tmp_path / "file").write_text("")
    assert "is a file" in _refused(capsys, "--out", str(tmp_path / "file"))
    assert "no model_index.json" in _refused(capsys, "--model", str(tmp_path))
    (tmp_path / "model_index.json").write_text("{}")
    assert "--judge" in _refused(capsys, "--model", str(tmp_path), "--judge", str(tmp_path / "no-clip"))
    assert not (tmp_path / "interventions-demo").exists()


def test_refusal_comes_before_any_long_work():
    """The console entry point, in a fresh process: refused in about the time Python starts."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "interventions.cli", "demo", "--model", "/nonexistent/sd15"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "'/nonexistent/sd15' does not exist" in done.stderr
    assert time.perf_counter() - t0 < 30  # a model load would import diffusers and build the UNet first


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    from tests.tiny_models import clip_tokenizer, sd_pipeline

    root = tmp_path_factory.mktemp("models")
    sd_pipeline().save_pretrained(root / "sd", safe_serialization=True)
    torch.manual_seed(0)
    tok = clip_tokenizer()  # pooled at its <eos> (a CLIP config's default eos id is not in this vocabulary)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, **ids),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(root / "clip", safe_serialization=True)
    tok.save_pretrained(root / "clip")
    return root


def test_model_runs_the_same_steps_on_a_stable_diffusion_folder(checkpoints, tmp_path, capsys):
    out = tmp_path / "report"
    args = ["--model", str(checkpoints / "sd"), "--judge", str(checkpoints / "clip"), "--world", "shapes"]
    code = main(["demo", *args, "--quick", "--steps", "2", "--out", str(out), "--no-progress"])
    assert code == 0 and capsys.readouterr().out.strip() == str(out.resolve())
    m = json.loads((out / "metrics.json").read_text())
    loc = m["images"]["localization"]
    layers = {r["site"] for r in loc["rows"]}
    assert len(layers) == 4 and all(s.endswith("attn2:input.encoder_hidden_states") for s in layers)
    assert {r["step"] for r in loc["rows"]} == {"0", "1", "all"}
    assert loc["source"] != loc["baseline"]  # the random judge still tells the two prompts apart
    assert [r["strength"] for r in m["images"]["steering"]] == [0.0, 16.0]
    assert "saeuron" not in m and "tones" not in m
    page = (out / "index.html").read_text()
    assert "Skipped: the shipped SAEs are for the shapes world" in page and page.count("<img") == 2


def test_a_hub_id_is_checked_before_any_model_loads(monkeypatch, tmp_path):
    """Against the local Hub test server: an id the Hub does not have is refused, one it has
    passes; offline, an id that was never downloaded is refused with how to get it."""
    from huggingface_hub import HfApi, constants

    from recipes.demo.cli import DemoError, check, parser
    from tests.hub_server import local_hub

    args = parser().parse_args
    with local_hub(monkeypatch, tmp_path) as server:
        api = HfApi(endpoint=server.url, token="hf_test_token")
        api.create_repo("org/tiny-sd")
        api.upload_file(path_or_fileobj=b"{}", path_in_repo="model_index.json", repo_id="org/tiny-sd")
        api.create_repo("org/tiny-clip")
        api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id="org/tiny-clip")
        check(args(["--model", "org/tiny-sd", "--judge", "org/tiny-clip", "--out", str(tmp_path / "r")]))
        with pytest.raises(DemoError, match="'org/no-such-sd' is not a model on the Hub with a model_index.json"):
            check(args(["--model", "org/no-such-sd"]))
        with pytest.raises(DemoError, match="--judge 'org/no-such-clip' is not a model on the Hub with a config.json"):
            check(args(["--model", "org/tiny-sd", "--judge", "org/no-such-clip"]))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DemoError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set.*hf download"):
        check(args(["--model", "org/tiny-sd"]))
    assert not (tmp_path / "r").exists()
