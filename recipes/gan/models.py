"""Networks of the ZDC GAN recipes, scaled down from the papers' DCGANs for a CPU.

* :class:`ConditionEncoder` turns the 9 raw conditions ``(E, vx, vy, vz, px, py, pz, m, q)`` into
  standardised features: ``log E``, the vertex, the direction ``px/pz, py/pz`` (what the lever arm
  multiplies), ``q / pz`` (what the magnet bends by), mass and charge. The
  standardisation statistics are buffers, saved with the weights, so a loaded generator takes raw
  conditions.
* :class:`Generator`: ``noise (10) + encoded conditions -> FC -> (4w, 14, 8) -> transposed conv
  (2w, 28, 16) -> transposed conv (1, 56, 32) -> softplus -> crop to 56 x 30``, output in
  ``log1p(photons)`` space (the papers' DCGAN: FC -> 512 x 18 x 10 -> upsample / conv -> 56 x 30,
  ReLU, log1p; scaled down to ``w = width``, 8 in the recipes, so that a training step costs ~0.1 s
  on one core; a softplus with beta 2 in place of the papers' ReLU).
  Without gradients (sampling) the same function runs ~1.7x faster on one CPU core: the first
  transposed conv on a channels-last input, the last one (one output channel, where transposed-conv
  kernels are slowest) as the equal 3x3 conv + pixel shuffle (:func:`subpixel_conv_weights`).
* :class:`Discriminator`: strided convs -> flatten, concat encoded conditions -> FC to the 64-d
  penultimate features ``h`` (returned for SDI) -> logit.
* :class:`PositionRegressor`: small CNN predicting the brightest pixel ``(row, col)`` in pixels.
* :class:`Router`: MLP on the encoded conditions ``9 -> 128 -> 64 -> 32 -> n_experts`` (ExpertSim).
* :class:`MixtureGenerator`: a router in front of ``n_experts`` generators; hard routing at
  sampling time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "N_CONDITIONS",
    "ConditionEncoder",
    "Generator",
    "Discriminator",
    "PositionRegressor",
    "Router",
    "MixtureGenerator",
    "encode_conditions",
    "subpixel_conv_weights",
    "count_parameters",
]

N_CONDITIONS = 9


def encode_conditions(raw: torch.Tensor) -> torch.Tensor:
    """Raw ``(B, 9)`` conditions -> unstandardised features ``(B, 9)`` (see module doc)."""
    if raw.dim() != 2 or raw.shape[1] != N_CONDITIONS:
        hint = " (one event: conditions[None])" if raw.shape == (N_CONDITIONS,) else ""
        raise ValueError(
            f"conditions must have shape (batch, {N_CONDITIONS}): (E, vx, vy, vz, px, py, pz, m, q) per event; "
            f"got {tuple(raw.shape)}{hint}"
        )
    raw = raw.to(torch.float32)
    energy, vx, vy, vz, px, py, pz, mass, charge = raw.unbind(-1)
    pz_safe = pz.clamp_min(1e-3)
    return torch.stack(
        [
            torch.log(energy.clamp_min(1e-3)),
            vx,
            vy,
            vz,
            1e4 * px / pz_safe,
            1e4 * py / pz_safe,
            1e3 * charge / pz_safe,
            mass,
            charge,
        ],
        dim=-1,
    )


class ConditionEncoder(nn.Module):
    """:func:`encode_conditions` then standardisation by buffers ``mean``, ``std`` (set by :meth:`fit`)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(N_CONDITIONS))
        self.register_buffer("std", torch.ones(N_CONDITIONS))

    @torch.no_grad()
    def fit(self, raw: torch.Tensor) -> ConditionEncoder:
        feats = encode_conditions(raw)
        self.mean.copy_(feats.mean(0))
        self.std.copy_(feats.std(0).clamp_min(1e-6))
        return self

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return (encode_conditions(raw) - self.mean) / self.std


class Generator(nn.Module):
    """``G(z, c)``: noise ``(B, noise_dim)`` + raw conditions ``(B, 9)`` -> ``log1p`` image ``(B, 1, H, W)``."""

    def __init__(self, noise_dim: int = 10, width: int = 16, shape: tuple[int, int] = (56, 30)) -> None:
        super().__init__()
        self.noise_dim, self.width, self.shape = noise_dim, width, (int(shape[0]), int(shape[1]))
        self.base = (math.ceil(self.shape[0] / 4), math.ceil(self.shape[1] / 4))  # 14 x 8 for 56 x 30
        c0, c1 = 4 * width, 2 * width
        self.encoder = ConditionEncoder()
        self.fc = nn.Sequential(
            nn.Linear(noise_dim + N_CONDITIONS, c0 * self.base[0] * self.base[1]), nn.LeakyReLU(0.2)
        )
        self.net = nn.Sequential(
            nn.ConvTranspose2d(c0, c1, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(c1, 1, 4, stride=2, padding=1),
            nn.Softplus(beta=2.0),
        )

    def forward(self, noise: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        x = self.fc(torch.cat([noise, self.encoder(conditions)], dim=1)).view(-1, 4 * self.width, *self.base)
        if torch.is_grad_enabled():
            x = self.net(x)
        else:  # sampling: the same function, laid out for faster CPU conv kernels (module doc)
            up1, act, up2, out = self.net
            x = act(up1(x.contiguous(memory_format=torch.channels_last)))
            x = out(_subpixel_upsample(up2, x))
        h, w = self.shape
        top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
        return x[..., top : top + h, left : left + w]

    @torch.no_grad()
    def sample(
        self, conditions: torch.Tensor, generator: torch.Generator | None = None, batch_size: int = 256
    ) -> torch.Tensor:
        """Photon images ``(B, H, W)`` (``expm1`` of the output) for raw ``conditions``."""
        return _sample_photons(self, conditions, generator, batch_size)


# Output pixel 2m + a of ConvTranspose2d(kernel 4, stride 2, padding 1) sums inputs m - 1, m, m + 1
# (taps 0, 1, 2 of a 3x3 conv) through kernel index _SUBPIXEL_TAPS[a][tap] (None: no kernel entry).
_SUBPIXEL_TAPS = ((3, 1, None), (None, 2, 0))


def subpixel_conv_weights(layer: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight ``(4 * C_out, C_in, 3, 3)`` and bias of the 3x3 convolution (padding 1) that, followed by
    ``pixel_shuffle(2)``, computes the same function as ``layer`` (kernel 4, stride 2, padding 1).

    >>> up = nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1)
    >>> w, b = subpixel_conv_weights(up)
    >>> x = torch.randn(1, 3, 5, 4)
    >>> torch.allclose(F.pixel_shuffle(F.conv2d(x, w, b, padding=1), 2), up(x), atol=1e-5)
    True
    """
    shape = (layer.kernel_size, layer.stride, layer.padding, layer.output_padding, layer.dilation, layer.groups)
    if shape != ((4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 1):
        raise ValueError(
            "subpixel_conv_weights takes ConvTranspose2d(kernel_size=4, stride=2, padding=1) without groups, "
            f"dilation or output_padding; got kernel {layer.kernel_size}, stride {layer.stride}, padding "
            f"{layer.padding}, output_padding {layer.output_padding}, dilation {layer.dilation}, groups {layer.groups}"
        )
    w = layer.weight  # (C_in, C_out, 4, 4)
    c_in, c_out = w.shape[:2]
    out = w.new_zeros(c_out, 2, 2, c_in, 3, 3)
    for a, rows in enumerate(_SUBPIXEL_TAPS):
        for b, cols in enumerate(_SUBPIXEL_TAPS):
            for t, k in enumerate(rows):
                for u, q in enumerate(cols):
                    if k is not None and q is not None:
                        out[:, a, b, :, t, u] = w[:, :, k, q].T
    bias = None if layer.bias is None else layer.bias.repeat_interleave(4)
    return out.reshape(4 * c_out, c_in, 3, 3), bias


def _subpixel_upsample(layer: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    weight, bias = subpixel_conv_weights(layer)
    return F.pixel_shuffle(F.conv2d(x, weight, bias, padding=1), 2)


def _conv_trunk(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
    )


def _trunk_size(width: int, shape: tuple[int, int]) -> int:
    h, w = shape
    for _ in range(3):
        h, w = (h + 1) // 2, (w + 1) // 2
    return 4 * width * h * w


class Discriminator(nn.Module):
    """``D(x, c) -> (logit (B, 1), features (B, feature_dim))``; ``features`` is the penultimate layer."""

    def __init__(self, width: int = 16, feature_dim: int = 64, shape: tuple[int, int] = (56, 30)) -> None:
        super().__init__()
        self.encoder = ConditionEncoder()
        self.trunk = _conv_trunk(width)
        self.features = nn.Sequential(
            nn.Linear(_trunk_size(width, shape) + N_CONDITIONS, feature_dim), nn.LeakyReLU(0.2)
        )
        self.head = nn.Linear(feature_dim, 1)

    def forward(self, images: torch.Tensor, conditions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(torch.cat([self.trunk(images), self.encoder(conditions)], dim=1))
        return self.head(h), h


class PositionRegressor(nn.Module):
    """Brightest-pixel position ``(row, col)`` in pixels from a ``log1p`` image ``(B, 1, H, W)``."""

    def __init__(self, width: int = 8, shape: tuple[int, int] = (56, 30)) -> None:
        super().__init__()
        self.trunk = _conv_trunk(width)
        self.head = nn.Sequential(nn.Linear(_trunk_size(width, shape), 64), nn.LeakyReLU(0.2), nn.Linear(64, 2))
        self.register_buffer("scale", torch.tensor([shape[0] - 1.0, shape[1] - 1.0]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (0.5 + self.head(self.trunk(images))) * self.scale


class Router(nn.Module):
    """ExpertSim router: encoded conditions ``9 -> 128 -> 64 -> 32 -> n_experts`` logits."""

    def __init__(self, n_experts: int = 3, hidden: tuple[int, ...] = (128, 64, 32)) -> None:
        super().__init__()
        self.encoder = ConditionEncoder()
        layers: list[nn.Module] = []
        d = N_CONDITIONS
        for h in hidden:
            layers += [nn.Linear(d, h), nn.LeakyReLU(0.2)]
            d = h
        layers.append(nn.Linear(d, n_experts))
        self.mlp = nn.Sequential(*layers)

    def forward(self, conditions: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.encoder(conditions))


class MixtureGenerator(nn.Module):
    """Router + ``n_experts`` generators; each condition goes to its argmax expert."""

    def __init__(
        self, n_experts: int = 3, noise_dim: int = 10, width: int = 16, shape: tuple[int, int] = (56, 30)
    ) -> None:
        super().__init__()
        self.n_experts, self.noise_dim, self.shape = n_experts, noise_dim, (int(shape[0]), int(shape[1]))
        self.router = Router(n_experts)
        self.experts = nn.ModuleList(Generator(noise_dim, width, shape) for _ in range(n_experts))

    @torch.no_grad()
    def route(self, conditions: torch.Tensor) -> torch.Tensor:
        """Expert index ``(B,)`` of each condition (no Gumbel noise), on the router's device."""
        device = next(self.router.parameters()).device
        return self.router(conditions.to(device)).argmax(dim=-1)

    def forward(self, noise: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        index = self.route(conditions)
        out = noise.new_zeros(noise.shape[0], 1, *self.shape)
        for i, expert in enumerate(self.experts):
            sel = (index == i).nonzero(as_tuple=True)[0]
            if sel.numel():
                out[sel] = expert(noise[sel], conditions[sel])
        return out

    @torch.no_grad()
    def sample(
        self, conditions: torch.Tensor, generator: torch.Generator | None = None, batch_size: int = 256
    ) -> torch.Tensor:
        """Photon images ``(B, H, W)`` for raw ``conditions``."""
        return _sample_photons(self, conditions, generator, batch_size)


def _sample_photons(
    model: Generator | MixtureGenerator, conditions: torch.Tensor, generator: torch.Generator | None, batch_size: int
) -> torch.Tensor:
    """``expm1`` of the model's output on fresh noise, ``batch_size`` conditions at a time, on the
    model's device (the noise is drawn where ``generator`` lives, so a CPU generator gives the same
    events on every device)."""
    device = next(model.parameters()).device
    noise_device = device if generator is None else generator.device
    out = []
    for start in range(0, conditions.shape[0], batch_size):
        c = conditions[start : start + batch_size].to(device)
        z = torch.randn(c.shape[0], model.noise_dim, generator=generator, device=noise_device).to(device)
        out.append(torch.expm1(model(z, c))[:, 0])
    return torch.cat(out) if out else torch.zeros(0, *model.shape, device=device)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
