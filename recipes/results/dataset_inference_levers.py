"""How the lever table of the dataset-inference section of ``recipes/results/README.md`` was made.

Per-view denoising losses of the tones members model and of the shipped tones model it was
fine-tuned from (the reference), for the 250 members, 1,000 held-out clips (``fresh(1000, 1)``)
and 1,000 non-members (``fresh(1000, 2)``), at 12 timesteps with 8 noise draws each; then the
per-timestep AUC, and dataset inference at n = 100 and 250 (1,000 held-out clips) with the
logistic and the sum scorers for several views, timestep bands and the reference-calibrated loss
``log(loss_members_model / loss_reference)``.

``python recipes/results/dataset_inference_levers.py OUT_DIR`` (812 s on one thread of the loaded 2-core machine;
writes ``OUT_DIR/levers.safetensors``, ``{model}.{set}``: N x 12 x 8, and prints the table).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from interventions.membership import denoising_loss
from recipes.dataset_inference import catalogue
from recipes.dataset_inference import inference as di
from recipes.dataset_inference.run import TONES_MEMBERS_DIR
from recipes.dataset_inference.stats import auc
from recipes.worlds import tones_model as tm

TIMESTEPS = [10, 25, 50, 100, 150, 200, 300, 400, 500, 600, 700, 850]
VIEWS = 8
SETS = ("members", "heldout", "nonmembers")


def losses(path: Path, clips: catalogue.Clips, set_index: int) -> torch.Tensor:
    """``N x T x V``: conditional v-prediction loss, view ``k`` of rows ``start..`` seeded by (set, k, start)."""
    model = tm.load_model(path)
    rope = tm.rotary_embedding(model.transformer, theta=model.rope_theta)
    alphas = tm.build_train_scheduler().alphas_cumprod
    out = torch.zeros(len(clips), len(TIMESTEPS), VIEWS)
    with torch.no_grad():
        for start in range(0, len(clips), 250):
            x0 = clips.reps[start : start + 250]
            states, pooled = tm.encode_text(model.text_encoder, model.tokenizer, clips.prompts[start : start + 250])

            def denoise(x, t, states=states, pooled=pooled):
                return tm.denoise(model.transformer, x, t.float().expand(x.shape[0]), states, pooled, rope)

            for k in range(VIEWS):
                g = torch.Generator().manual_seed(10_000 * set_index + 1000 * k + start)
                noise = torch.randn((len(TIMESTEPS), *x0.shape), generator=g)
                out[start : start + 250, :, k] = denoising_loss(denoise, x0, TIMESTEPS, alphas, "v_prediction", noise)
    return out


def table(v: dict[str, torch.Tensor]) -> None:
    for i, t in enumerate(TIMESTEPS):
        m, n = (v[f"ft.{s}"][:, i] for s in ("members", "nonmembers"))
        print(f"t={t:4d} AUC 1 view {auc(-m[:, 0], -n[:, 0]):.3f}, {VIEWS} views {auc(-m.mean(1), -n.mean(1)):.3f}")
    bands = {"all t": list(range(12)), "t 50-400": [2, 3, 5, 7], "t 300-600": [6, 7, 8, 9], "t 10-100": [0, 1, 2, 3]}
    for views in (1, 2, 4, 8):
        for name, idx in bands.items():
            for calibrated in (False, True):
                if calibrated and (views not in (1, 8) or name != "all t"):
                    continue
                feats = {}
                for s in SETS:
                    x = v[f"ft.{s}"][:, idx, :views].mean(2)
                    feats[s] = (x / v[f"base.{s}"][:, idx, :views].mean(2)).log() if calibrated else x
                m, h, n = feats["members"], feats["heldout"], feats["nonmembers"]
                row = f"views {views} {name:9s}{' calibrated' if calibrated else ''}: AUC {auc(di._combined(m, h), di._combined(n, h)):.3f}"
                for scorer in ("logistic", "sum"):
                    curve = di.p_value_curve(m, h, [100, 250], 100, 0, scorer, False, heldout_n=1000)
                    null = di.null_p_values(n, h, 250, 200, 0, scorer, heldout_n=1000)
                    row += f" | {scorer} mean p n=100 {curve[0]['mean_p']:.4f} n=250 {curve[1]['mean_p']:.4f}"
                    row += f" null<0.05 {float((null < 0.05).double().mean()):.3f}"
                print(row, flush=True)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    path = out / "levers.safetensors"
    if not path.is_file():
        sets = {
            "members": catalogue.members(250),
            "heldout": catalogue.fresh(1000, 1),
            "nonmembers": catalogue.fresh(1000, 2),
        }
        models = {"ft": TONES_MEMBERS_DIR, "base": tm.CHECKPOINT_DIR}
        v = {f"{m}.{s}": losses(p, c, i) for m, p in models.items() for i, (s, c) in enumerate(sets.items())}
        out.mkdir(parents=True, exist_ok=True)
        save_file(v, str(path), metadata={"timesteps": json.dumps(TIMESTEPS)})
    table(load_file(str(path)))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
