"""The README's tour runs as written, and does what its text says."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_tour_runs_and_does_what_it_says(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = _blocks()
    assert len(blocks) == 3
    ns: dict = {}
    exec(compile(blocks[0], "README.md:diffusers", "exec"), ns)
    # "one entry per (site, step, branch): here 5 sites x 10 steps x 2 branches"
    assert len(ns["red"].keys()) == 5 * 10 * 2
    plain = ns["run"]("a blue circle")
    assert not torch.equal(plain, ns["patched"]) and not torch.equal(plain, ns["steered"])

    exec(compile(blocks[1], "README.md:transformers", "exec"), ns)
    model = ns["model"]
    with torch.no_grad():
        corrupt = model(ns["corrupt_ids"]).logits
        clean = model(ns["clean_ids"]).logits
    # restoring token 0's embedding makes the corrupted run the clean run
    torch.testing.assert_close(ns["restored"], clean)
    assert not torch.allclose(corrupt, clean)
    assert ns["steered_ids"].shape == (1, 9)

    exec(compile(blocks[2], "README.md:artifacts", "exec"), ns)
    report, sae = ns["report"], ns["sae"]
    assert report.l0 <= 16 and report.fvu < 0.5, report
    assert (tmp_path / "saes" / "unet.mid_block" / "sae_weights.safetensors").exists()
    assert not torch.equal(ns["edited"], ns["run"]("a red circle"))
    assert sae.info.site == "unet.mid_block"
    assert len(ns["vector"].directions) == 10  # one direction per step
