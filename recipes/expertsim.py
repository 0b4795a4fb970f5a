"""ExpertSim: a mixture of generative experts for fast calorimeter simulation (arXiv 2508.20991).

A router MLP on the 9 conditions (``9 -> 128 -> 64 -> 32 -> n_experts``) picks one of several
SDI-GAN experts per event with a Gumbel-softmax whose temperature decays from ``tau_start`` (1.2)
to ``tau_min`` (0.8) over training, routing hard in the forward pass (straight-through
estimator: ``one_hot + soft - soft.detach()``). Each sample trains only its routed expert
(generator, discriminator and position regressor, each expert its own), with the expert's losses
weighted by its share of the batch. The router is trained by

``l_gan * L_gan - l_diff * sum_{i<j} |m_i - m_j| - l_util * H(mean gate) + l_alb * mean exp(1 / sum gate)``

with ``L_gan`` the experts' per-sample generator losses through the straight-through gates,
``m_i`` the gate-weighted mean generated photon sum of expert ``i`` (in units of the training
set's mean photon sum): experts are pushed to cover different intensity ranges, which on the
calorimeter world are its regimes (empty / pions / protons / alphas).

Run it::

    interventions run expertsim --conditions 1500 --epochs 40 --experts 3 --out runs/expertsim
    python -m recipes.expertsim --help

It trains on the calorimeter world, evaluates on held-out conditions (5-channel Wasserstein,
photon-sum Wasserstein, brightest-pixel error, spread correlation, routing table per regime),
writes ``metrics.json``, ``comparison.png`` and the Hub folder of the trained mixture (config,
safetensors weights, card), and pushes it with ``--push REPO_ID``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import torch
from torch import nn

from recipes.gan import losses as L
from recipes.gan.data import GanData, make_split, prepare
from recipes.gan.evaluation import LearningCurve, evaluate, plot_comparison, routing_table
from recipes.gan.models import MixtureGenerator, Router, count_parameters
from recipes.gan.trainer import Expert, GanConfig, GanTrainer, expert_step

__all__ = ["ExpertSimTrainer", "temperature", "default_config", "run", "main"]


def temperature(step: int, total: int, tau_start: float = 1.2, tau_min: float = 0.8) -> float:
    """Exponential decay from ``tau_start`` at step 0 to ``tau_min`` at the last step."""
    if total <= 1:
        return tau_min
    frac = min(max(step / (total - 1), 0.0), 1.0)
    return tau_start * (tau_min / tau_start) ** frac


def default_config(**overrides: Any) -> GanConfig:
    """The recipe's defaults: 3 SDI-GAN experts (SDI, intensity and regressor on); router lr 1e-3 and
    utilisation weight 1 (the paper's lr 1e-2 collapsed the routing onto one expert in runs of a few
    hundred steps with batch 64)."""
    kw: dict[str, Any] = dict(n_experts=3, lr_g=1e-3, lr_d=4e-4, lr_aux=1e-3, lr_router=1e-3, l_util=1.0)
    kw.update(overrides)
    return GanConfig(**kw)


class ExpertSimTrainer(GanTrainer):
    """:class:`recipes.gan.trainer.GanTrainer` with a Gumbel router in front of ``cfg.n_experts`` experts."""

    def _build(self) -> None:
        cfg = self.cfg
        if cfg.n_experts < 1:
            raise ValueError(f"n_experts must be >= 1, got {cfg.n_experts}")
        self.experts = nn.ModuleList(Expert(cfg) for _ in range(cfg.n_experts)).to(self.device)
        for e in self.experts:
            e.fit_encoders(self.data.conditions)
        self.router = Router(cfg.n_experts).to(self.device)
        self.router.encoder.fit(self.data.conditions)
        self.expert_opts = [e.optimisers(cfg) for e in self.experts]
        self.router_opt = torch.optim.Adam(self.router.parameters(), lr=cfg.lr_router)
        self.mixture = MixtureGenerator(cfg.n_experts, cfg.noise_dim, cfg.width, cfg.shape).to(self.device)
        self.mixture.router = self.router
        self.mixture.experts = nn.ModuleList(e.sampling_generator for e in self.experts)
        self.intensity_unit = float(self.data.photon_sum.mean().clamp_min(1.0))
        self.total_steps = cfg.epochs * self.steps_per_epoch()

    def modules(self) -> dict[str, nn.Module]:
        return {"router": self.router, "experts": self.experts}

    def optimisers(self) -> dict[str, torch.optim.Optimizer]:
        out = {"router": self.router_opt}
        for i, opts in enumerate(self.expert_opts):
            out.update({f"expert{i}.{k}": v for k, v in opts.items()})
        return out

    @property
    def sampler(self) -> MixtureGenerator:
        return self.mixture

    def train_step(self, batch: GanData) -> dict[str, float]:
        cfg = self.cfg
        n = len(batch)
        tau = temperature(self.step, self.total_steps, cfg.tau_start, cfg.tau_min)
        soft, gates, index = L.gumbel_softmax_st(self.router(batch.conditions), tau, generator=self.noise_rng)
        per_sample = torch.zeros(n, device=self.device)
        intensities = torch.zeros(n, device=self.device)
        log: dict[str, float] = {}
        for i, (expert, opts) in enumerate(zip(self.experts, self.expert_opts, strict=True)):
            sel = (index == i).nonzero(as_tuple=True)[0]
            share = sel.numel() / n
            log[f"share{i}"] = share
            if sel.numel() == 0:
                continue
            parts, ps, sums = expert_step(expert, opts, batch.subset(sel), cfg, self.noise_rng, weight=share)
            per_sample[sel] = ps.float()  # bf16 under autocast
            intensities[sel] = sums.float() / self.intensity_unit
            for k, v in parts.items():  # expert losses are already weighted by their share
                log[k] = log.get(k, 0.0) + v
        if cfg.diff_source == "real":
            intensities = batch.photon_sum / self.intensity_unit
        if cfg.n_experts > 1:
            loss, parts = L.router_loss(
                soft, gates, index, per_sample, intensities, cfg.l_gan, cfg.l_diff, cfg.l_util, cfg.l_alb
            )
            self.router_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.router_opt.step()
            log["router"] = float(loss.detach())
            log.update({f"router_{k}": v for k, v in parts.items()})
        log["tau"] = tau
        return log


# --------------------------------------------------------------------------------------- Hub class


def hub_class() -> type:
    """:class:`MixtureGenerator` with ``hub_cards.ModelHubMixin`` (imports ``huggingface_hub``)."""
    from recipes.gan.hub import HubMixtureGenerator

    return HubMixtureGenerator


# -------------------------------------------------------------------------------------------- run


def run(
    cfg: GanConfig,
    n_conditions: int = 1500,
    n_test: int = 300,
    repeats: int = 4,
    test_repeats: int = 8,
    data_seed: int = 0,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    data: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None,
    curve_every: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Train on the calorimeter world, evaluate on held-out conditions; returns the metrics
    (``out``: metrics.json, comparison.png, checkpoint and the Hub folder ``generator/``;
    ``curve_every``: also held-out metrics every that many epochs, in ``metrics["curve"]``; ``device``,
    ``dtype``: where and in what precision to train, see :class:`recipes.gan.trainer.GanTrainer`)."""
    train, test = data if data is not None else make_split(n_conditions, n_test, repeats, test_repeats, data_seed)
    trainer = ExpertSimTrainer(cfg, prepare(train), device=device, dtype=dtype)
    start = time.process_time()
    wall = time.perf_counter()
    curve = None if curve_every is None else LearningCurve(test, test_repeats, curve_every, seed=cfg.seed + 99)
    checkpoints = None if out is None else os.path.join(out, "checkpoints")
    trainer.fit(progress=progress, checkpoint_dir=checkpoints, on_epoch=curve)
    metrics, generated = evaluate(trainer.sampler, test, test_repeats, seed=cfg.seed + 99)
    index = trainer.mixture.route(test["conditions"]).cpu()
    metrics["routing"] = routing_table(index, test["regime"], cfg.n_experts)
    metrics.update(
        recipe="expertsim",
        config=cfg.to_json(),
        n_train_events=len(trainer.data),
        n_test_events=int(test["images"].shape[0]),
        steps=trainer.step,
        device=str(trainer.device),
        dtype=str(trainer.dtype).removeprefix("torch."),
        train_cpu_s=time.process_time() - start,
        train_wall_s=time.perf_counter() - wall,
        parameters={
            "generator_total": count_parameters(trainer.mixture),
            "generator_per_expert": count_parameters(trainer.experts[0].generator),
            "generator_total_trainable": sum(count_parameters(e.generator) for e in trainer.experts)
            + count_parameters(trainer.router),
            "discriminators": sum(count_parameters(e.discriminator) for e in trainer.experts),
            "regressors": sum(count_parameters(e.regressor) for e in trainer.experts if e.regressor is not None),
        },
        history=trainer.history,
    )
    if curve is not None:
        metrics["curve"] = curve.points
    if out is not None:
        os.makedirs(out, exist_ok=True)
        plot_comparison(
            os.path.join(out, "comparison.png"), test, generated, test_repeats, title=f"ExpertSim ({cfg.n_experts})"
        )
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=1)
        from recipes.gan.hub import save_generator

        save_generator(trainer.mixture, os.path.join(out, "generator"), metrics=metrics, recipe="expertsim")
    metrics["_trainer"] = trainer
    return metrics


def main(argv: list[str] | None = None) -> int:
    from recipes.gan.cli import add_common_arguments, check_common_arguments, common_config, finish

    parser = argparse.ArgumentParser(prog="interventions run expertsim", description=__doc__.split("\n")[0])
    add_common_arguments(parser, epochs=40)  # the mixture still improves from 20 to 40 epochs
    parser.add_argument("--experts", type=int, default=3, help="number of generative experts (default 3)")
    parser.add_argument("--lr-router", type=float, default=1e-3)
    parser.add_argument("--l-diff", type=float, default=0.1, help="differentiation weight")
    parser.add_argument("--l-util", type=float, default=1.0, help="utilisation-entropy weight")
    parser.add_argument("--l-alb", type=float, default=1e-7, help="adaptive load-balancing weight")
    parser.add_argument(
        "--diff-source",
        choices=("generated", "real"),
        default="generated",
        help="photon sums in the differentiation term: the experts' generated ones (paper) or the real ones",
    )
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    if args.experts < 1:
        parser.error(f"--experts must be >= 1, got {args.experts}")
    torch.set_num_threads(args.threads)
    cfg = default_config(
        n_experts=args.experts,
        **common_config(args),
        lr_router=args.lr_router,
        l_diff=args.l_diff,
        l_util=args.l_util,
        l_alb=args.l_alb,
        diff_source=args.diff_source,
    )
    metrics = run(
        cfg,
        args.conditions,
        args.test_conditions,
        args.repeats,
        args.test_repeats,
        args.data_seed,
        args.out,
        device=args.device,
    )
    return finish(args, metrics)


if __name__ == "__main__":
    raise SystemExit(main())
