"""The conditional GAN trainer shared by ``recipes.sdi_gan`` and ``recipes.expertsim``.

One :class:`Expert` is a generator, a discriminator (exposing its penultimate features) and,
optionally, the brightest-pixel regressor. :func:`expert_step` is one training step of one expert
on the samples routed to it, as in the papers' code:

1. discriminator: ``fake = G(z1, c)``; non-saturating BCE on real and ``fake.detach()``;
2. regressor (if on): MSE of its position on the real events, its own optimiser;
3. generator: ``softplus(-D(fake))`` + ``SDI(h(G(z1,c)), h(G(z2,c)), z1, z2, sigma)`` (if on)
   + ``l_in |sum expm1(fake) - photon sum|`` (if on) + ``l_aux MSE(A(fake), position)`` (if on);
   all expert losses are multiplied by ``weight`` (the expert's share of the batch in ExpertSim);
4. if ``ema > 0`` (ExpertSim's code uses 0.99; off by default: in runs of a few hundred steps the
   average lagged behind, held-out Wasserstein distances got worse), an exponential moving average
   of the generator is updated, and it is what samples.

:class:`GanTrainer` runs epochs of shuffled batches with a tqdm bar, is deterministic for
``config.seed`` (initialisation from the global RNG seeded inside ``torch.random.fork_rng``, so
the caller's RNG state is untouched; shuffling and noise from their own seeded CPU
``torch.Generator``, so a seed draws the same weights, batches and noise on every device; on one
CPU thread two runs are bit-identical), trains on ``device`` (the data and models are moved there,
every tensor of a step is created there; ``dtype=torch.bfloat16`` autocasts the forward passes;
default float32: the papers' losses are not checked in bf16), and saves / restores
checkpoints as safetensors (models, optimiser states, RNG states; JSON metadata in the header).
ExpertSim subclasses it (``recipes.expertsim.ExpertSimTrainer``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import losses as L
from .data import GanData
from .models import Discriminator, Generator, PositionRegressor

__all__ = ["GanConfig", "Expert", "expert_step", "GanTrainer", "save_tensors", "load_tensors"]

CHECKPOINT_FORMAT = "interventions.recipes.gan.checkpoint/1"


@dataclass
class GanConfig:
    """Hyper-parameters. Paper values: lr_G 1e-4, lr_D 1e-5, lr_aux 1e-4, batch 128, 250 epochs,
    l_div 0.1, l_in 1e-3, l_aux 1e-3; here the learning rates are raised for runs of minutes."""

    noise_dim: int = 10
    width: int = 8  # generator widths 4w, 2w
    d_width: int = 8  # discriminator widths w, 2w, 4w
    aux_width: int = 8
    feature_dim: int = 64
    shape: tuple[int, int] = (56, 30)
    lr_g: float = 5e-4
    lr_d: float = 2e-4
    lr_aux: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 64
    epochs: int = 5
    seed: int = 0
    sdi: bool = True
    l_div: float = 0.1
    intensity: bool = True
    l_in: float = 1e-3
    intensity_scale: float = 1.0
    aux: bool = True
    l_aux: float = 1e-3
    ema: float = 0.0  # decay of an exponential moving average of the generator used for sampling (0: off)
    # ExpertSim (ignored when n_experts == 1)
    n_experts: int = 1
    lr_router: float = 1e-3
    tau_start: float = 1.2
    tau_min: float = 0.8
    l_gan: float = 0.1
    l_diff: float = 0.1
    l_util: float = 1.0
    l_alb: float = 1e-7
    diff_source: str = "generated"  # intensities of the differentiation term: "generated" (paper) or "real"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"], d["betas"] = list(self.shape), list(self.betas)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GanConfig:
        d = dict(d)
        d["shape"], d["betas"] = tuple(d["shape"]), tuple(d["betas"])
        return cls(**d)


class Expert(nn.Module):
    """Generator, discriminator and (if ``aux``) position regressor of one (SDI-)GAN."""

    def __init__(self, cfg: GanConfig) -> None:
        super().__init__()
        self.generator = Generator(cfg.noise_dim, cfg.width, cfg.shape)
        self.discriminator = Discriminator(cfg.d_width, cfg.feature_dim, cfg.shape)
        self.regressor = PositionRegressor(cfg.aux_width, cfg.shape) if cfg.aux else None
        self.ema_decay = cfg.ema
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False) if cfg.ema > 0 else None

    @property
    def sampling_generator(self) -> Generator:
        """The generator used to sample: the moving average when ``ema > 0``."""
        return self.generator_ema if self.generator_ema is not None else self.generator

    def fit_encoders(self, conditions: torch.Tensor) -> None:
        self.generator.encoder.fit(conditions)
        self.discriminator.encoder.fit(conditions)
        if self.generator_ema is not None:
            self.generator_ema.load_state_dict(self.generator.state_dict())

    @torch.no_grad()
    def update_ema(self) -> None:
        if self.generator_ema is None:
            return
        for avg, p in zip(self.generator_ema.parameters(), self.generator.parameters(), strict=True):
            avg.lerp_(p, 1.0 - self.ema_decay)

    def optimisers(self, cfg: GanConfig) -> dict[str, torch.optim.Optimizer]:
        opts = {
            "g": torch.optim.Adam(self.generator.parameters(), lr=cfg.lr_g, betas=cfg.betas),
            "d": torch.optim.Adam(self.discriminator.parameters(), lr=cfg.lr_d, betas=cfg.betas),
        }
        if self.regressor is not None:
            opts["aux"] = torch.optim.Adam(self.regressor.parameters(), lr=cfg.lr_aux, betas=cfg.betas)
        return opts


def expert_step(
    expert: Expert,
    opts: dict[str, torch.optim.Optimizer],
    batch: GanData,
    cfg: GanConfig,
    noise_rng: torch.Generator,
    weight: float = 1.0,
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """One step of one expert on ``batch``; returns (logged losses, per-sample generator GAN loss,
    generated photon sums), the last two detached, ``(B,)``."""
    G, D, A = expert.generator, expert.discriminator, expert.regressor
    x, c = batch.images, batch.conditions
    n = x.shape[0]
    z1 = _noise(n, cfg.noise_dim, noise_rng, x.device)
    fake = G(z1, c)

    # discriminator
    opts["d"].zero_grad(set_to_none=True)
    real_logits, _ = D(x, c)
    fake_logits, _ = D(fake.detach(), c)
    d_loss = weight * L.discriminator_loss(real_logits, fake_logits)
    d_loss.backward()
    opts["d"].step()
    log = {"d": d_loss.item()}  # weighted: in ExpertSim the experts' entries sum to a batch mean

    # position regressor on real events
    if A is not None:
        opts["aux"].zero_grad(set_to_none=True)
        a_loss = weight * L.position_loss(A(x), batch.position)
        a_loss.backward()
        opts["aux"].step()
        log["aux_real"] = a_loss.item()

    # generator
    opts["g"].zero_grad(set_to_none=True)
    frozen = [D] + ([A] if A is not None else [])
    for m in frozen:
        m.requires_grad_(False)
    try:
        logits, h1 = D(fake, c)
        per_sample = L.generator_loss(logits, reduction="none")
        g_loss = per_sample.mean()
        log["g_gan"] = weight * g_loss.item()
        if cfg.sdi:
            z2 = _noise(n, cfg.noise_dim, noise_rng, x.device)
            _, h2 = D(G(z2, c), c)
            div = L.sdi_loss(h1, h2, z1, z2, batch.sigma, strength=cfg.l_div)
            g_loss = g_loss + div
            log["sdi"] = weight * div.item()
        if cfg.intensity:
            inten = cfg.l_in * L.intensity_loss(fake, batch.photon_sum, cfg.intensity_scale)
            g_loss = g_loss + inten
            log["intensity"] = weight * inten.item()
        if A is not None:
            aux = cfg.l_aux * L.position_loss(A(fake), batch.position)
            g_loss = g_loss + aux
            log["aux"] = weight * aux.item()
        (weight * g_loss).backward()
        opts["g"].step()
        expert.update_ema()
    finally:
        for m in frozen:
            m.requires_grad_(True)
    with torch.no_grad():
        sums = torch.expm1(fake.detach()).flatten(1).sum(1)
    return log, per_sample.detach(), sums


def _noise(n: int, dim: int, rng: torch.Generator, device: torch.device) -> torch.Tensor:
    """Normal noise drawn where ``rng`` lives (the same numbers on every device), moved to ``device``."""
    return torch.randn(n, dim, generator=rng, device=rng.device).to(device, non_blocking=True)


# ------------------------------------------------------------------------------------ checkpoints


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """safetensors file with ``metadata`` as JSON under the header key ``interventions.metadata``,
    written beside and renamed onto ``path`` (a planted symlink is replaced, never written through)."""
    from safetensors.torch import save_file

    from ..folders import replace_files

    path = Path(os.path.abspath(path))
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"format": "pt", "interventions.metadata": json.dumps(metadata)}
    replace_files(path.parent, lambda tmp: save_file(flat, str(tmp / path.name), metadata=meta))


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a file written by :func:`save_tensors` (header bounded and parsed
    once); a damaged or foreign file is an ``ArtifactError`` naming it."""
    from safetensors.torch import load_file

    from hub_cards import ArtifactError, check_safetensors
    from hub_cards.layouts import loads_json

    where = os.fspath(path)
    header = check_safetensors(path, root=os.path.dirname(os.path.abspath(path)))
    stored = header.get("__metadata__")
    text = stored.get("interventions.metadata", "{}") if isinstance(stored, dict) else "{}"
    meta = loads_json(text, f"{where}: its metadata") if isinstance(text, str) else None
    if not isinstance(meta, dict):
        raise ArtifactError(f"{where}: its 'interventions.metadata' is not a JSON object: not a GAN checkpoint")
    try:
        return load_file(where), meta
    except Exception as exc:  # safetensors raises its own error types
        raise ArtifactError(f"{where} is not a readable safetensors file ({exc})") from None


def _optim_tensors(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors = {}
    for pid, state in sd["state"].items():
        for k, v in state.items():
            tensors[f"{prefix}.{pid}.{k}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
    return tensors, {"param_groups": sd["param_groups"]}


def _load_optim(prefix: str, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith(prefix + "."):
            pid, k = key[len(prefix) + 1 :].split(".", 1)
            state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ---------------------------------------------------------------------------------------- trainer


class GanTrainer:
    """Trains one conditional (SDI-)GAN on :class:`GanData`.

    >>> trainer = GanTrainer(GanConfig(epochs=2), prepare(train_set))  # doctest: +SKIP
    >>> history = trainer.fit()  # doctest: +SKIP
    >>> images = trainer.sampler.sample(conditions)  # doctest: +SKIP
    """

    def __init__(
        self,
        cfg: GanConfig,
        data: GanData,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if cfg.sdi and len(data) and not bool((data.sigma > 0).any()):
            raise ValueError(
                "SDI scales its diversity by the per-condition spread of the photon sum, and this data set has "
                "none (one event per condition?): generate it with repeats >= 2 or set sdi=False"
            )
        self.device = torch.device(device) if device is not None else data.images.device
        self.dtype = dtype or torch.float32
        self.cfg, self.data = cfg, data.to(self.device)
        self.total_steps = cfg.epochs * self.steps_per_epoch()
        with torch.random.fork_rng(devices=[]), torch.device("cpu"):  # the same weights on every device
            torch.manual_seed(cfg.seed)
            self._build()
        self.data_rng = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
        self.noise_rng = torch.Generator(device="cpu").manual_seed(cfg.seed + 2)
        self.epoch, self.step = 0, 0
        self.history: list[dict[str, float]] = []

    # -- hooks for subclasses
    def _build(self) -> None:
        """Build the models (on the CPU, seeded), move them to ``self.device``, then their optimisers."""
        self.expert = Expert(self.cfg).to(self.device)
        self.expert.fit_encoders(self.data.conditions)
        self.opts = self.expert.optimisers(self.cfg)

    def modules(self) -> dict[str, nn.Module]:
        return {"expert": self.expert}

    def optimisers(self) -> dict[str, torch.optim.Optimizer]:
        return {f"expert.{k}": v for k, v in self.opts.items()}

    @property
    def sampler(self) -> nn.Module:
        """What generates events: a :class:`Generator` (``.sample(conditions, generator)``), the
        moving average of the trained one when ``cfg.ema > 0``."""
        return self.expert.sampling_generator

    def train_step(self, batch: GanData) -> dict[str, float]:
        log, _, _ = expert_step(self.expert, self.opts, batch, self.cfg, self.noise_rng)
        return log

    def precision(self) -> contextlib.AbstractContextManager[Any]:
        """bf16/fp16 autocast of a step when ``dtype`` asks for it (parameters stay float32)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    # -- loop
    def steps_per_epoch(self) -> int:
        return max(1, len(self.data) // self.cfg.batch_size)

    def fit(
        self,
        epochs: int | None = None,
        progress: bool = True,
        checkpoint_dir: str | os.PathLike | None = None,
        max_seconds: float | None = None,
        on_epoch: Callable[[GanTrainer], None] | None = None,
    ) -> list[dict[str, float]]:
        """Train until ``epochs`` (default ``cfg.epochs``) epochs are done in total; returns the history
        (mean losses per epoch). ``checkpoint_dir``: a ``checkpoint.safetensors`` after every epoch;
        ``on_epoch(trainer)`` is called after every epoch (e.g. an ``evaluation.LearningCurve``)."""
        from tqdm.auto import tqdm

        epochs = self.cfg.epochs if epochs is None else epochs
        per_epoch = self.steps_per_epoch()
        total = epochs * per_epoch
        start = time.perf_counter()
        bar = tqdm(total=total, initial=self.step, disable=not progress, desc=type(self).__name__, leave=False)
        try:
            while self.epoch < epochs:
                order = torch.randperm(len(self.data), generator=self.data_rng, device="cpu").to(self.device)
                sums: dict[str, float] = {}
                for b in range(per_epoch):
                    idx = order[b * self.cfg.batch_size : (b + 1) * self.cfg.batch_size]
                    with self.precision():
                        log = self.train_step(self.data.subset(idx))
                    self.step += 1
                    for k, v in log.items():
                        sums[k] = sums.get(k, 0.0) + v
                    bar.update(1)
                    if b % 10 == 0:
                        bar.set_postfix({k: f"{v:.3g}" for k, v in log.items() if k in ("d", "g_gan", "router")})
                self.epoch += 1
                entry = {k: v / per_epoch for k, v in sums.items()}
                entry.update(epoch=self.epoch, seconds=time.perf_counter() - start)
                self.history.append(entry)
                if on_epoch is not None:
                    on_epoch(self)
                if checkpoint_dir is not None:
                    self.save_checkpoint(os.path.join(os.fspath(checkpoint_dir), "checkpoint.safetensors"))
                if max_seconds is not None and time.perf_counter() - start > max_seconds:
                    break
        finally:
            bar.close()
        return self.history

    # -- checkpoints
    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Models, optimiser states and RNG states as safetensors; config and progress as JSON metadata."""
        tensors: dict[str, torch.Tensor] = {}
        for name, module in self.modules().items():
            for k, v in module.state_dict().items():
                tensors[f"model.{name}.{k}"] = v
        optim_meta = {}
        for name, opt in self.optimisers().items():
            t, m = _optim_tensors(f"optim.{name}", opt)
            tensors.update(t)
            optim_meta[name] = m
        tensors["rng.data"] = self.data_rng.get_state()
        tensors["rng.noise"] = self.noise_rng.get_state()
        meta = {
            "format": CHECKPOINT_FORMAT,
            "trainer": type(self).__name__,
            "config": self.cfg.to_json(),
            "epoch": self.epoch,
            "step": self.step,
            "optimisers": optim_meta,
            "history": self.history,
        }
        save_tensors(path, tensors, meta)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore what :meth:`save_checkpoint` wrote; training resumes bit-exactly. The checkpoint
        must come from the same trainer class and config (the seed and the number of epochs may
        differ: the checkpoint's RNG states replace the seed's); otherwise nothing is changed."""
        tensors, meta = load_tensors(path)
        where = os.fspath(path)
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{where!r} is not a GAN checkpoint (format {meta.get('format')!r})")
        if meta.get("trainer") != type(self).__name__:
            raise ValueError(f"{where!r} is a checkpoint of {meta.get('trainer')}, not of {type(self).__name__}")
        saved, ours = meta.get("config"), self.cfg.to_json()
        if not isinstance(saved, dict):
            raise ValueError(f"{where!r} holds no config object: not a GAN checkpoint")
        differ = [
            f"{k}: {saved.get(k)!r} there, {v!r} here"
            for k, v in ours.items()
            if k not in ("seed", "epochs") and saved.get(k) != v
        ]
        if differ:
            raise ValueError(
                f"{where!r} was trained with another config ({'; '.join(differ)}); build the trainer with "
                "GanConfig.from_json(...) of the checkpoint's config to resume it"
            )
        states = {}
        for name, module in self.modules().items():
            prefix = f"model.{name}."
            states[name] = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
            found = {k: tuple(v.shape) for k, v in states[name].items()}
            if found != expected:
                raise ValueError(f"{where!r}: the weights of {name!r} do not match this trainer's")
        if not (
            type(meta.get("epoch")) is int and type(meta.get("step")) is int and isinstance(meta.get("history"), list)
        ):
            raise ValueError(f"{where!r}: its epoch, step or history is missing or of the wrong type")
        snapshot = self._snapshot()
        try:
            for name, module in self.modules().items():
                module.load_state_dict(states[name])
            for name, opt in self.optimisers().items():
                _load_optim(f"optim.{name}", opt, tensors, meta["optimisers"][name])
            self.data_rng.set_state(tensors["rng.data"])
            self.noise_rng.set_state(tensors["rng.noise"])
        except Exception as exc:  # a part that passed the checks above but cannot be applied
            self._restore(snapshot)
            raise ValueError(
                f"{where!r} cannot be restored ({type(exc).__name__}: {exc}); the trainer is unchanged"
            ) from exc
        self.epoch, self.step, self.history = meta["epoch"], meta["step"], meta["history"]

    def _snapshot(self) -> dict[str, Any]:
        """A copy of everything :meth:`load_checkpoint` replaces (restored when it fails part-way)."""
        return copy.deepcopy(
            {
                "modules": {name: m.state_dict() for name, m in self.modules().items()},
                "optimisers": {name: o.state_dict() for name, o in self.optimisers().items()},
                "rng": (self.data_rng.get_state(), self.noise_rng.get_state()),
            }
        )

    def _restore(self, snapshot: dict[str, Any]) -> None:
        for name, module in self.modules().items():
            module.load_state_dict(snapshot["modules"][name])
        for name, opt in self.optimisers().items():
            opt.load_state_dict(snapshot["optimisers"][name])
        self.data_rng.set_state(snapshot["rng"][0])
        self.noise_rng.set_state(snapshot["rng"][1])
