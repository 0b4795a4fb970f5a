"""Write the SAE folders that tests/test_sae_sparsify.py loads, with the real ``eai-sparsify``.

Run in a virtual environment that has ``eai-sparsify`` (its pins clash with ours: datasets,
accelerate, simple-parsing), e.g.::

    python -m venv /tmp/sparsify-venv && /tmp/sparsify-venv/bin/pip install torch==2.13.0 eai-sparsify==1.3.3
    /tmp/sparsify-venv/bin/python tests/sparsify_write.py tests/sparsify_folders

Each folder is what ``SparseCoder.save_to_disk`` writes; ``expected.safetensors`` holds a fixed
input and sparsify's own ``encode``/``decode`` outputs for it. ``saeuron`` is SAeUron's layout
(``SAE/sae.py`` of cywinski/SAeUron: sparsify's tensors, its own ``cfg.json`` keys), written here
from its source since that fork is not a package.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from sparsify import SparseCoder, SparseCoderConfig

D_IN = 16


def write(root: Path, name: str, cfg: SparseCoderConfig, dtype=torch.float32, seed=0, **kw) -> None:
    torch.manual_seed(seed)
    sae = SparseCoder(D_IN, cfg, dtype=dtype, **kw)
    with torch.no_grad():  # trained-looking weights: non-zero biases, unit-norm decoder rows
        sae.encoder.bias.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.5)
        if sae.W_dec is not None:
            sae.W_dec.normal_()
            sae.set_decoder_norm_to_unit_norm()
        if sae.W_skip is not None:
            sae.W_skip.normal_(0, 0.1)
    sae.save_to_disk(root / name)
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(1)).to(dtype)
    if sae.W_dec is not None and not cfg.transcode and cfg.activation == "topk":
        with torch.no_grad():
            top_acts, top_indices, _ = sae.encode(x)
            dense = torch.zeros(32, sae.num_latents, dtype=top_acts.dtype).scatter(-1, top_indices, top_acts)
            out = sae.decode(top_acts, top_indices)
        save_file({"x": x, "latents": dense, "sae_out": out}, str(root / name / "expected.safetensors"))


def main(root: Path) -> None:
    write(root, "topk", SparseCoderConfig(expansion_factor=4, k=4))
    write(root, "topk_num_latents_bf16", SparseCoderConfig(num_latents=48, k=6, multi_topk=True), dtype=torch.bfloat16)
    write(root, "skip_connection", SparseCoderConfig(expansion_factor=4, k=4, skip_connection=True))
    write(root, "transcoder", SparseCoderConfig(expansion_factor=4, k=4, transcode=True))
    write(root, "groupmax", SparseCoderConfig(expansion_factor=4, k=4, activation="groupmax"))
    write(root, "no_decoder", SparseCoderConfig(expansion_factor=4, k=4), decoder=False)
    # SAeUron: sparsify's tensors and maths, its SaeConfig's keys
    write(root, "saeuron", SparseCoderConfig(expansion_factor=4, k=4), seed=2)
    cfg = {
        "expansion_factor": 4,
        "normalize_decoder": True,
        "num_latents": 0,
        "k": 4,
        "batch_topk": True,
        "sample_topk": False,
        "input_unit_norm": False,
        "multi_topk": False,
        "d_in": D_IN,
    }
    (root / "saeuron" / "cfg.json").write_text(json.dumps(cfg))
    write(root, "saeuron_input_unit_norm", SparseCoderConfig(expansion_factor=4, k=4), seed=3)
    (root / "saeuron_input_unit_norm" / "cfg.json").write_text(json.dumps({**cfg, "input_unit_norm": True}))
    import importlib.metadata as m

    (root / "WRITTEN_BY.txt").write_text(
        f"eai-sparsify {m.version('eai-sparsify')}, torch {torch.__version__}\n"
        "python tests/sparsify_write.py tests/sparsify_folders\n"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
