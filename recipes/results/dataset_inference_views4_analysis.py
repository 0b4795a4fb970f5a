"""How the three-seed table (4 views) of the dataset-inference section of
``recipes/results/README.md`` was analysed, from the feature matrices the CLI saved.

``python recipes/results/dataset_inference_views4_analysis.py`` reads
``recipes/results/dataset_inference_tones_members_views4_seed{0,1,2}_features.safetensors`` and
writes ``dataset_inference_tones_members_views4_analysis.json``: for all 10 timesteps and for the
band t = 300-600, the sum and the logistic scorers' p against n (100 resamples, 750 of the 1,000
held-out clips each), the rate of p < 0.05 of non-member suspect sets (n = 250 and 100, 200
resamples), the sum's p for all 250 members against two disjoint held-out sets of 1,000 drawn from
the 2,000 fresh clips (held-out and non-member pools together) and against all 2,000, and the
standardised effect of the sum score (bootstrap interval) with the n it needs for a mean p <= 0.01
(:func:`recipes.dataset_inference.stats.n_for_mean_p`). About 5 min on one core.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from recipes.dataset_inference import inference as di
from recipes.dataset_inference.stats import auc, expected_mean_p, n_for_mean_p

HERE = Path(__file__).resolve().parent
NAME = "dataset_inference_tones_members_views4"
NS = [50, 100, 150, 200, 250]


def effect(members: torch.Tensor, fresh: torch.Tensor, seed: int) -> dict:
    """Standardised effect of the sum score (min-max over the fresh clips), bootstrap 95% interval."""
    lo, span = fresh.min(0).values, fresh.max(0).values - fresh.min(0).values
    sm, sf = ((members - lo) / span).sum(1), ((fresh - lo) / span).sum(1)

    def d(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((b.mean() - a.mean()) / b.std())

    g = torch.Generator().manual_seed(seed)
    boot = torch.tensor(
        [
            d(sm[torch.randint(len(sm), (len(sm),), generator=g)], sf[torch.randint(len(sf), (len(sf),), generator=g)])
            for _ in range(1000)
        ]
    )
    low, high = torch.quantile(boot, torch.tensor([0.025, 0.975])).tolist()
    return {
        "d": round(d(sm, sf), 3),
        "d_ci95": [round(low, 3), round(high, 3)],
        "auc_vs_fresh": round(auc(-sm, -sf), 3),
        "expected_mean_p_n250_heldout750": round(expected_mean_p(d(sm, sf), 250, 750), 4),
        "n_for_mean_p_0.01_heldout750 (d, d_lo, d_hi)": [n_for_mean_p(x, 0.01, 750) for x in (d(sm, sf), low, high)],
    }


def analyse(seed: int) -> dict:
    with safe_open(str(HERE / f"{NAME}_seed{seed}_features.safetensors"), "pt") as f:
        names = json.loads(f.metadata()["feature_names"])
        members, heldout, nonmembers = (f.get_tensor(f"seed{seed}.{k}") for k in ("suspect", "heldout", "nonmembers"))
    steps = [int(n.split("@")[1]) for n in names]
    columns = {"all t": list(range(len(steps))), "t 300-600": [i for i, t in enumerate(steps) if 300 <= t <= 600]}
    out: dict = {}
    for cname, idx in columns.items():
        m, h, n = members[:, idx], heldout[:, idx], nonmembers[:, idx]
        fresh = torch.cat([h, n])
        for scorer in ("sum", "logistic"):
            curve = di.p_value_curve(m, h, NS, 100, seed, scorer, False, heldout_n=750)
            null = {k: di.null_p_values(n, h, k, 200, seed, scorer, heldout_n=750) for k in (250, 100)}
            out[f"{scorer} | {cname}"] = {
                "p_curve (n, mean p, median p, share p <= 0.01)": [
                    [c["n"], round(c["mean_p"], 4), round(c["median_p"], 4), c["frac_p_le_0.01"]] for c in curve
                ],
                "smallest_n_mean_p_le_0.01": di.smallest_n(curve),
                "null_rate_p_lt_0.05 (n=250, n=100)": [float((p < 0.05).double().mean()) for p in null.values()],
            }
        perm = torch.randperm(len(fresh), generator=torch.Generator().manual_seed(100 + seed))
        pools = [fresh[perm[j * 1000 : (j + 1) * 1000]] for j in range(2)]
        g = torch.Generator().manual_seed(0)
        out[f"sum | {cname} | p, all 250 members"] = {
            "two disjoint held-out sets of 1000": [round(di.dataset_inference(m, pool, g, "sum"), 6) for pool in pools],
            "all 2000 fresh clips as held-out": round(di.dataset_inference(m, fresh, g, "sum"), 6),
        }
        out[f"sum | {cname} | effect"] = effect(m, fresh, seed)
    return out


def main() -> None:
    torch.set_num_threads(1)
    result = {str(seed): analyse(seed) for seed in (0, 1, 2)}
    (HERE / f"{NAME}_analysis.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
