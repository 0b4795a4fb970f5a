"""The ELROND measurements: concept complexity per prompt and seed (the complexity column, the
median gradient norm of :mod:`recipes.elrond.complexity`; the paper's counts on the raw gradients
and on gradients scaled to unit norm, with the authors' parallel analysis; the mean norm and total
variance; optionally the count above a self-pair null), the directions (PCA with the paper's
threshold, a TopK SAE), what steering along the top direction does by the evaluators, and random
steering against mode collapse.

A free factor of a prompt is one it does not name (:func:`recipes.worlds.shapes.parse_prompt`).
Steering is scored against the unsteered sample drawn from the same noise: a factor "changes"
when the evaluator's class differs from that sample's; a prompted factor is "kept" when it still
matches the prompt.

>>> free_factors("a striped circle")
['colour']
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from interventions import DiskStore
from interventions.sae_train import TrainConfig, train_sae
from interventions.subspace import complexity, pca

from .complexity import gradient_spread, total_variance
from .gradients import KEY, Setting, collect
from .steer import generate, random_steering


def free_factors(prompt: str) -> list[str]:
    """The shapes-world factors a prompt leaves open."""
    from recipes.worlds.shapes import parse_prompt

    return [f for f, v in parse_prompt(prompt).items() if v is None]


def gradients(
    pipe: Any,
    prompt: str,
    n: int,
    seed: int,
    folder: Any,
    setting: Setting,
    word: str | None = None,
    self_pairs: bool = False,
) -> Tensor:
    """Concept-token gradients of one prompt and seed, streamed to a DiskStore in ``folder``
    (read back from it when it already holds them: a rerun resumes); ``self_pairs``: the null of
    :func:`recipes.elrond.gradients.collect`."""
    with DiskStore(folder, buffer_bytes=16 << 20) as store:
        if KEY in store:
            held = store.get(KEY)
            if len(held) != n:
                raise ValueError(f"{folder} holds {len(held)} gradients, not {n}: delete it or use another --out")
            return held
    with DiskStore(folder, buffer_bytes=16 << 20) as store:
        return collect(pipe, prompt, n, store, word=word, setting=setting, seed=seed, self_pairs=self_pairs)


def unit_rows(grads: Tensor) -> Tensor:
    """Each gradient scaled to unit norm: the spread of directions, not of magnitudes (a few pairs
    whose B is far from the regenerated A otherwise dominate the raw variance)."""
    return torch.nn.functional.normalize(grads, dim=1)


def parallel_analysis(grads: Tensor, simulations: int = 100, percentile: float = 95.0, seed: int = 0) -> int:
    """Horn's parallel analysis, as the authors run it on their gradients
    (``synthetic_dataset/parallel_analysis.py``): the number of leading components whose covariance
    eigenvalue exceeds the ``percentile`` of the same-rank eigenvalue of the rows with every column
    shuffled independently (correlations destroyed, each coordinate's spread kept). Unlike the
    spectral gap it can be 0: a spread no more structured than noise."""
    g = torch.Generator().manual_seed(seed)
    x = grads.double()
    real = torch.linalg.svdvals(x - x.mean(0))
    null = torch.stack(
        [
            torch.linalg.svdvals(s - s.mean(0))
            for s in (x.gather(0, torch.argsort(torch.rand(x.shape, generator=g), 0)) for _ in range(simulations))
        ]
    )
    above = real > torch.quantile(null, percentile / 100, dim=0)
    return int(above.long().cumprod(0).sum())


def above_null(grads: Tensor, null: Tensor, draws: int = 100, percentile: float = 95.0, seed: int = 0) -> int:
    """How many leading directions of ``grads`` (raw, centred: their scale kept) have more variance
    than the same-rank direction of ``null`` in ``percentile`` % of ``draws`` bootstrap resamples of
    its rows: a parallel analysis whose noise is a measured null (e.g. self-pair gradients) rather
    than a shuffled copy of the rows, so it can say that a spread is no larger than the null's."""
    g = torch.Generator().manual_seed(seed)
    real = torch.linalg.svdvals(grads.double() - grads.double().mean(0))
    x = null.double()
    boot = torch.stack(
        [
            torch.linalg.svdvals(r - r.mean(0))
            for r in (x[torch.randint(len(x), (len(x),), generator=g)] for _ in range(draws))
        ]
    )
    scale = (len(grads) / len(null)) ** 0.5  # singular values grow with sqrt(rows)
    above = real > scale * torch.quantile(boot, percentile / 100, dim=0)
    return int(above.long().cumprod(0).sum())


def sae_directions(grads: Tensor, seed: int = 0, k: int = 4, steps: int = 400) -> tuple[Tensor, dict[str, float]]:
    """TopK SAE on the gradients (expansion 1, ``d_sae = D``); decoder rows ordered by how much
    of the gradients' reconstruction they carry (mean |activation|), most first."""
    config = TrainConfig(
        steps=steps,
        batch_size=64,
        lr=3e-3,
        eval_tokens=min(max(len(grads) // 8, 8), len(grads) // 2),
        seed=seed,
        progress=False,
    )
    scale = grads.norm(dim=1).mean().clamp_min(1e-12)  # the SAE trains at unit scale
    sae, report = train_sae(grads / scale, d_sae=grads.shape[1], kind="topk", k=k, config=config)
    with torch.no_grad():
        usage = sae.encode(grads / scale).abs().mean(0)
    order = usage.argsort(descending=True)
    return sae.W_dec.detach()[order], {"fvu": report.fvu, "l0": report.l0, "dead": report.dead_fraction}


def predict_factors(evaluators: dict[str, Any], latents: Tensor) -> dict[str, Tensor]:
    from recipes.worlds.shapes_eval import predict

    return predict(evaluators, latents.clamp(-1, 1))


def steering_effect(
    pipe: Any,
    evaluators: dict[str, Any],
    prompt: str,
    directions: dict[str, Tensor],
    strength: float,
    n: int,
    seed: int,
    setting: Setting,
    unsteered: Tensor | None = None,
) -> dict[str, Any]:
    """For each named direction and both signs: the fraction of samples whose factor changed
    against the unsteered sample of the same noise, and the fraction keeping each prompted factor
    (``unsteered``: those samples, :func:`unsteered_samples`, when the caller already drew them)."""
    from recipes.worlds.shapes import FACTORS, parse_prompt

    named = {f: v for f, v in parse_prompt(prompt).items() if v is not None}
    zeros = torch.zeros(n)
    if unsteered is None:
        unsteered = unsteered_samples(pipe, prompt, n, seed, setting)
    base = predict_factors(evaluators, unsteered)
    out: dict[str, Any] = {"unsteered_keep": {f: float((base[f] == v).float().mean()) for f, v in named.items()}}
    for name, d in directions.items():
        for sign in (1, -1):
            pred = predict_factors(
                evaluators, generate(pipe, prompt, d.expand(n, -1), zeros + sign * strength, setting, seed)
            )
            out[f"{name}{'+' if sign > 0 else '-'}"] = {
                "changed": {f: round(float((pred[f] != base[f]).float().mean()), 4) for f in FACTORS},
                "kept": {f: round(float((pred[f] == v).float().mean()), 4) for f, v in named.items()},
            }
    return out


def unsteered_samples(pipe: Any, prompt: str, n: int, seed: int, setting: Setting) -> Tensor:
    """The ``n`` unsteered samples of ``prompt`` from noise ``seed``: what steering from the same
    noise is compared with (drawn once per seed and shared by :func:`steering_effect` and
    :func:`diversity`)."""
    width = pipe.text_encoder.config.hidden_size
    return generate(pipe, prompt, torch.zeros(n, width), torch.zeros(n), setting, seed)


def entropy_bits(labels: Tensor, classes: int = 4) -> float:
    """Entropy (bits) of the empirical distribution of class labels."""
    p = torch.bincount(labels, minlength=classes).float() / len(labels)
    return max(0.0, float(-(p[p > 0] * p[p > 0].log2()).sum()))


def prompt_agreement(pred: dict[str, Tensor], prompt: str) -> float:
    """The fraction of samples whose every factor the prompt names is predicted right (1 when it
    names none)."""
    from recipes.worlds.shapes import parse_prompt

    named = {f: v for f, v in parse_prompt(prompt).items() if v is not None}
    if not named:
        return 1.0
    return float(torch.stack([pred[f] == v for f, v in named.items()]).all(0).float().mean())


def diversity(
    pipe: Any,
    evaluators: dict[str, Any],
    prompt: str,
    directions: Tensor,
    low: float,
    high: float,
    n: int,
    seed: int,
    setting: Setting,
    unsteered: Tensor | None = None,
) -> dict[str, Any]:
    """Unsteered samples (``unsteered``, when the caller already drew them) against samples each
    steered by a random direction of ``directions`` (random sign) at a strength ``~ U[low, high]``:
    entropy of every factor (bits), mean pairwise pixel distance, and agreement with the prompted
    factors."""
    picked, strengths = random_steering(n, directions, low, high, torch.Generator().manual_seed(seed))
    if unsteered is None:
        unsteered = unsteered_samples(pipe, prompt, n, seed, setting)
    steered = generate(pipe, prompt, picked, strengths, setting, seed)
    out = {}
    for name, latents in (("unsteered", unsteered), ("random_steering", steered)):
        pred = predict_factors(evaluators, latents)
        flat = latents.flatten(1).float()
        out[name] = {
            "entropy_bits": {f: round(entropy_bits(v), 4) for f, v in pred.items()},
            "pairwise_distance": round(float(torch.pdist(flat).mean() / math.sqrt(flat.shape[1])), 4),
            "agreement": round(prompt_agreement(pred, prompt), 4),
        }
    return out


def measure(
    pipe: Any,
    evaluators: dict[str, Any] | None,
    prompts: list[str],
    seeds: list[int],
    n: int,
    folder: Any,
    setting: Setting,
    steer_prompts: list[str],
    steer_seeds: list[int],
    strength: float,
    n_steer: int,
    self_null: bool = False,
) -> dict[str, Any]:
    """The whole run: complexity of every prompt per seed; for ``steer_prompts``, the directions of
    the first seed's gradients and, with evaluators, their steering effect and random steering on
    ``steer_seeds`` (noise never used for the gradients)."""
    from pathlib import Path

    result: dict[str, Any] = {"setting": vars(setting), "n": n, "seeds": seeds, "strength": strength, "prompts": {}}
    for prompt in prompts:
        entry: dict[str, Any] = {"free": free_factors(prompt) if evaluators else None, "complexity": {}}
        grads = {}
        for seed in seeds:
            grads[seed] = gradients(pipe, prompt, n, seed, Path(folder) / _slug(prompt) / f"seed{seed}", setting)
            c = complexity(grads[seed])
            c["pca_kept"] = len(pca(grads[seed])[0])
            c["explained"] = c["explained"][:8]  # type: ignore[index]
            unit = complexity(unit_rows(grads[seed]))
            c["unit"] = {k: unit[k] for k in ("components_95", "spectral_gap")}
            c["unit"]["parallel_analysis"] = parallel_analysis(unit_rows(grads[seed]))
            c["median_norm"] = round(gradient_spread(grads[seed]), 9)  # the complexity column
            c["mean_norm"] = round(float(grads[seed].norm(dim=1).mean()), 6)
            c["total_variance"] = round(total_variance(grads[seed]), 9)
            if self_null:
                folder_self = Path(folder) / _slug(prompt) / f"seed{seed}_self"
                null = gradients(pipe, prompt, n, seed, folder_self, setting, self_pairs=True)
                c["above_self_null"] = above_null(grads[seed], null)
                c["self_null_mean_norm"] = round(float(null.norm(dim=1).mean()), 6)
            entry["complexity"][seed] = c
            print(
                f"{prompt!r} seed {seed}: complexity (median |gradient|) {c['median_norm']:.3e}, "
                f"{c['components_95']} components to 95%, gap {c['spectral_gap']} "
                f"(unit rows: {unit['components_95']}, gap {unit['spectral_gap']}, "
                f"parallel analysis {c['unit']['parallel_analysis']}; above the self-pair null "
                f"{c.get('above_self_null', '-')})",
                flush=True,
            )
        if prompt in steer_prompts:
            g = grads[seeds[0]]
            pcs, ratios = pca(g)
            sae_dirs, sae_report = sae_directions(g, seed=seeds[0])
            rand = torch.nn.functional.normalize(
                torch.randn(g.shape[1], generator=torch.Generator().manual_seed(0)), dim=0
            )
            entry["directions"] = {
                "pca": pcs,
                "pca_explained": ratios.tolist(),
                "sae": sae_dirs,
                "sae_report": sae_report,
                "cos_sae0_pca0": round(float((sae_dirs[0] @ pcs[0]).abs()), 4),
            }
            if evaluators is not None:
                chosen = {"pca0": pcs[0], "sae0": sae_dirs[0], "random": rand}
                top = pcs[: max(1, min(4, len(pcs)))]
                entry["steering"], entry["random_steering"] = {}, {}
                for s in steer_seeds:
                    base = unsteered_samples(pipe, prompt, n_steer, s, setting)
                    entry["steering"][s] = steering_effect(
                        pipe, evaluators, prompt, chosen, strength, n_steer, s, setting, base
                    )
                    entry["random_steering"][s] = diversity(
                        pipe, evaluators, prompt, top, strength / 2, strength, n_steer, s, setting, base
                    )
        result["prompts"][prompt] = entry
    return result


def _slug(prompt: str) -> str:
    return "_".join(prompt.split()) or "empty"
