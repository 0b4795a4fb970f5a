"""SAELens interop: SAEs we save and publish load with SAELens 6.x ``SAE.from_pretrained``, unchanged.

Two stages, run by ``scripts/saelens_interop.sh`` in two interpreters (SAELens' pins, e.g.
transformers, clash with the project's, so it lives in its own virtual environment):

``export OUT`` (the project's Python)
    Saves one SAE per architecture (standard, topk, batchtopk, jumprelu; and a jumprelu that does not
    centre its input) with ``SAE.save`` under ``OUT/repo/<site>/``, writes the repo card, and
    stores inputs and the expected latents and reconstructions in ``OUT/expected/<name>.safetensors``:
    ``SAE.load`` of the same folder, checked against the formula ``z = act((x - b_dec) W_enc + b_enc)``
    (``x`` uncentred when ``apply_b_dec_to_input`` is false), ``x_hat = z W_dec + b_dec``.

``check OUT`` (the SAELens venv's Python; needs only this checkout on ``sys.path``)
    Starts the test Hub server (``tests/hub_server.py``), points ``HF_ENDPOINT`` at it, pushes
    ``OUT/repo`` with ``hub_cards.push``, then for every SAE: ``SAE.load_from_disk(folder)`` and
    ``SAE.from_pretrained("<org>/<repo>", "<site>")`` must give W_enc, W_dec, b_enc, b_dec
    (threshold) bit for bit and the expected encode / decode outputs.

    Then saves one SAE per SAELens architecture and setting (``_saelens_variants``) with SAELens'
    own ``save_model`` (its default metadata) under ``OUT/saelens/<name>/``, with SAELens' encode /
    decode of random inputs.

``import OUT`` (the project's Python)
    Every SAELens-saved folder must load with ``interventions.SAE.load`` and give SAELens' latents
    and reconstructions (bit-close: the same latents fire, relative difference < 1e-5), or be
    refused with an ``ArtifactError`` that names its architecture or setting.

Exit code 0 when everything matches; the report is printed either way.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

D_IN, D_SAE, K, N = 16, 64, 8, 32
REPO_ID = "interop/tiny-saes"
SAES = {  # name -> (architecture, site, apply_b_dec_to_input)
    "standard": ("standard", "blocks.0.hook_resid_post", True),
    "topk": ("topk", "unet.mid_block.attentions.0", True),
    "batchtopk": ("batchtopk", "transformer_blocks.1.attn2", True),
    "jumprelu": ("jumprelu", "model.layers.2.mlp", True),
    "jumprelu_uncentred": ("jumprelu", "model.layers.3.mlp", False),  # as Gemma Scope's SAEs
}


def _reference(arch: str, t: dict, x, centred: bool):  # type: ignore[no-untyped-def]
    import torch

    pre = ((x - t["b_dec"]) if centred else x) @ t["W_enc"] + t["b_enc"]
    if arch == "standard":
        z = torch.relu(pre)
    elif arch == "jumprelu":
        z = torch.relu(pre) * (pre > t["threshold"])
    else:
        top = pre.topk(K, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    return z, z @ t["W_dec"] + t["b_dec"]


def export(out: Path) -> int:
    import torch
    from safetensors.torch import load_file, save_file

    from hub_cards import write_card
    from interventions.sae import SAE, SAEInfo

    gen = torch.Generator().manual_seed(0)
    (out / "expected").mkdir(parents=True, exist_ok=True)
    for name, (arch, site, centred) in SAES.items():
        kind = {"standard": "relu"}.get(arch, arch)
        info = SAEInfo(
            site=site, base_model="tiny/model", layout="BNC", steps=[0, 1, 2], branch="cond", method=f"{arch}-sae"
        )
        sae = SAE(D_IN, D_SAE, kind, K, info=info, apply_b_dec_to_input=centred)  # type: ignore[arg-type]
        with torch.no_grad():
            w_dec = torch.randn(D_SAE, D_IN, generator=gen)
            sae.W_dec.copy_(w_dec / w_dec.norm(dim=-1, keepdim=True))
            sae.W_enc.copy_(torch.randn(D_IN, D_SAE, generator=gen) * 0.5)
            sae.b_enc.copy_(torch.randn(D_SAE, generator=gen) * 0.1)
            sae.b_dec.copy_(torch.randn(D_IN, generator=gen) * 0.1)
            if arch == "jumprelu":
                sae.threshold.copy_(torch.rand(D_SAE, generator=gen) * 0.5)
        folder = out / "repo" / site
        sae.save(folder)
        t = load_file(str(folder / "sae_weights.safetensors"))
        x = torch.randn(N, D_IN, generator=gen)
        z, x_hat = _reference(arch, t, x, centred)
        with torch.no_grad():
            back = SAE.load(folder)
            z_ours, x_hat_ours = back.encode(x), back.decode(back.encode(x))
        assert torch.allclose(z_ours, z, atol=1e-6) and torch.allclose(x_hat_ours, x_hat, atol=1e-6), name
        save_file(
            {"x": x, "z": z_ours.contiguous(), "x_hat": x_hat_ours.contiguous()},
            str(out / "expected" / f"{name}.safetensors"),
        )
    write_card(out / "repo", "sae", repo_id=REPO_ID)
    (out / "saes.json").write_text(json.dumps({n: s for n, (_, s, _) in SAES.items()}, indent=2))
    print(f"exported {len(SAES)} SAEs to {out / 'repo'} (expected outputs from interventions.SAE and the formula)")
    return 0


def check(out: Path) -> int:
    from tests.hub_server import HubServer

    saes = json.loads((out / "saes.json").read_text())
    failures: list[str] = []
    with HubServer() as hub, tempfile.TemporaryDirectory() as home:
        # huggingface_hub reads these once, at import: set them before anything imports it.
        os.environ.update(
            HF_ENDPOINT=hub.url,
            HF_HOME=home,
            HF_TOKEN="hf_interop",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
        )
        t0 = time.time()
        import sae_lens
        import torch
        from sae_lens import SAE
        from safetensors.torch import load_file

        import hub_cards

        print(f"sae_lens {sae_lens.__version__}, torch {torch.__version__} (import {time.time() - t0:.1f}s)")
        info = hub_cards.push(out / "repo", REPO_ID, tag="v1")
        print(f"pushed {out / 'repo'} to {hub.url}/{REPO_ID} @ {info.oid[:12]} (tag v1)")
        for name, site in saes.items():
            folder = out / "repo" / site
            expected = load_file(str(out / "expected" / f"{name}.safetensors"))
            ref = load_file(str(folder / "sae_weights.safetensors"))
            for how, load in (
                ("load_from_disk", lambda f=folder: SAE.load_from_disk(str(f))),
                ("from_pretrained", lambda s=site: SAE.from_pretrained(REPO_ID, s)),
            ):
                try:
                    sae = load()
                except Exception as e:  # report every failure, not just the first
                    failures.append(f"{name} {how}: {type(e).__name__}: {e}")
                    continue
                problems = []
                meta = sae.cfg.metadata
                if (meta.site, meta.hook_name, meta.layout, meta.steps) != (site, site, "BNC", [0, 1, 2]):
                    problems.append(f"metadata lost: {meta}")
                for p, value in ref.items():
                    got = getattr(sae, p).detach()
                    if not torch.equal(got, value):
                        problems.append(f"{p} differs (max {float((got - value).abs().max()):.3g})")
                with torch.no_grad():
                    z = sae.encode(expected["x"])
                    x_hat = sae.decode(z)
                exact = torch.equal(z, expected["z"]) and torch.equal(x_hat, expected["x_hat"])
                for label, a, b in (("encode", z, expected["z"]), ("decode", x_hat, expected["x_hat"])):
                    if not torch.allclose(a, b, atol=1e-6, rtol=1e-5):
                        problems.append(f"{label} differs (max {float((a - b).abs().max()):.3g})")
                status = (
                    "FAIL " + "; ".join(problems) if problems else ("ok, bit-exact" if exact else "ok, within 1e-6")
                )
                print(f"  {name:10s} {how:16s} {type(sae).__name__:12s} {status}")
                failures += [f"{name} {how}: {p}" for p in problems]
        fetched = hub.downloaded()
        print(f"SAELens downloaded {len(fetched)} files from the test Hub")
        failures += _save_with_saelens(out)
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("SAELens interop: all SAEs load unchanged and match")
    return 0


def _saelens_variants() -> dict[str, tuple[str, dict, bool]]:
    """name -> (architecture, config keywords, training class saved for inference): every SAE class
    SAELens registers, plus the settings that change what a standard or TopK SAE computes."""
    from sae_lens.registry import SAE_CLASS_REGISTRY

    out: dict[str, tuple[str, dict, bool]] = {}
    for arch in SAE_CLASS_REGISTRY:
        kw: dict = {"k": K} if "topk" in arch else {}
        if "transcoder" in arch:
            kw |= {"d_out": D_IN, "apply_b_dec_to_input": False}
        if arch == "temporal":  # d_in must divide by n_heads * bottleneck_factor (8 * 64 by default)
            kw |= {"n_heads": 2, "bottleneck_factor": 2}
        out[arch] = (arch, kw, False)
    out["topk_rescaled"] = ("topk", {"k": K, "rescale_acts_by_decoder_norm": True}, False)
    out["topk_training_defaults"] = ("topk", {"k": K}, True)  # rescale_acts_by_decoder_norm=True by default
    out["jumprelu_uncentred"] = ("jumprelu", {"apply_b_dec_to_input": False}, False)
    out["standard_hook_z"] = ("standard", {"reshape_activations": "hook_z"}, False)
    out["standard_layer_norm"] = ("standard", {"normalize_activations": "layer_norm"}, False)
    return out


def _save_with_saelens(out: Path) -> list[str]:
    """(SAELens venv) Save one SAE per variant with SAELens' own ``save_model`` (its default metadata:
    no hook_name), load it back with SAELens and store its encode / decode of random inputs."""
    import torch
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
    from safetensors.torch import save_file

    root = out / "saelens"
    failures = []
    gen = torch.Generator().manual_seed(1)
    for name, (arch, kw, training) in _saelens_variants().items():
        cls, cfg_cls = (SAE_TRAINING_CLASS_REGISTRY if training else SAE_CLASS_REGISTRY)[arch]
        try:
            sae = cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, **kw))
        except Exception as e:
            print(f"  {name:26s} SAELens cannot build it with defaults ({type(e).__name__}: {e}); skipped")
            continue
        with torch.no_grad():
            for p in sae.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + (0.3 if p.ndim == 1 else 0.0))
        (sae.save_inference_model if training else sae.save_model)(root / name)
        from sae_lens import SAE

        try:
            back = SAE.load_from_disk(str(root / name))
        except Exception as e:
            failures.append(f"SAELens cannot load its own {name}: {type(e).__name__}: {e}")
            continue
        x = torch.randn(N, D_IN, generator=gen) * 2
        try:
            with torch.no_grad():
                z = back.encode(x)
                x_hat = back.decode(z)
        except Exception as e:  # hook_z needs [..., heads, d_head] inputs: no expectation, must be refused
            print(f"  {name:26s} SAELens cannot encode [n, d_in] tokens ({type(e).__name__}); we must refuse it")
            continue
        save_file({"x": x, "z": z.contiguous(), "x_hat": x_hat.contiguous()}, str(root / f"{name}.safetensors"))
    print(f"saved {len(list(root.glob('*/cfg.json')))} SAEs with SAELens' save_model under {root}")
    return failures


def import_check(out: Path) -> int:
    """(Project Python) Every SAELens-saved folder loads with ``SAE.load`` and computes what SAELens
    computes (bit-close), or is refused with an error that names the architecture or setting."""
    import torch
    from safetensors.torch import load_file

    from hub_cards import ArtifactError
    from interventions.sae import SAE

    failures = []
    variants = _variants_on_disk(out / "saelens")
    for name, (arch, kw) in variants.items():
        folder = out / "saelens" / name
        try:
            sae = SAE.load(folder)
        except ArtifactError as e:
            named = [s for s in (f"'{arch}'", *(f"{k}={v!r}" for k, v in kw.items())) if s in str(e)]
            status = f"refused, naming {named[0]}" if named else f"FAIL refused without naming the setting: {e}"
            print(f"  {name:26s} {status}")
            if not named:
                failures.append(f"{name}: {e}")
            continue
        if not (out / "saelens" / f"{name}.safetensors").is_file():
            print(f"  {name:26s} FAIL loaded, but SAELens itself cannot compute it on [n, d_in] tokens")
            failures.append(f"{name}: loaded although SAELens cannot compute it on [n, d_in] tokens")
            continue
        expected = load_file(str(out / "saelens" / f"{name}.safetensors"))
        with torch.no_grad():
            z = sae.encode(expected["x"])
            x_hat = sae.decode(z)
        rel = max(
            float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
            for a, b in ((z, expected["z"]), (x_hat, expected["x_hat"]))
        )
        ok = torch.equal(z != 0, expected["z"] != 0) and rel < 1e-5
        print(f"  {name:26s} SAE.load {sae.kind:9s} {'ok' if ok else 'FAIL'}: max relative difference {rel:.2e}")
        if not ok:
            failures.append(f"{name}: SAE.load computes something else (max relative difference {rel:.2e})")
    if failures or not variants:
        print("FAILED:\n  " + "\n  ".join(failures or ["no SAELens-saved folders found"]))
        return 1
    print(f"SAELens-saved SAEs: all {len(variants)} load bit-close or are refused by name")
    return 0


def _variants_on_disk(root: Path) -> dict[str, tuple[str, dict]]:
    """The saved variants with their architecture and the settings that differ from SAELens' defaults."""
    found = {}
    for cfg_path in sorted(root.glob("*/cfg.json")):
        cfg = json.loads(cfg_path.read_text())
        settings = {k: cfg[k] for k in ("normalize_activations", "reshape_activations") if cfg.get(k, "none") != "none"}
        found[cfg_path.parent.name] = (cfg["architecture"], settings)
    return found


def main(argv: list[str]) -> int:
    stages = {"export": export, "check": check, "import": import_check}
    if len(argv) != 2 or argv[0] not in stages:
        print(__doc__)
        return 2
    return stages[argv[0]](Path(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
