"""The calorimeter world: a Monte-Carlo toy of ALICE's zero-degree calorimeters (ZDC).

This is the ground truth that the GAN recipes (SDI-GAN, ExpertSim) must match and outrun. The
real ZDC data (GEANT4 responses, 56x30 for the proton ZDC, 44x44 for the neutron one) is not
public; this simulator reproduces the properties those papers rely on: a 9-number condition
vector per particle, a photon-count image per event, several clearly separated intensity regimes
(near-empty events included), and repeated events per condition so that the per-condition
spread (``std_proton`` in the papers' tables) is defined.

Conditions
----------
``(energy [GeV], vx, vy, vz [cm], px, py, pz [GeV], mass [GeV], charge [e])`` in that order
(:data:`CONDITION_NAMES`), as in the papers' condition tables. :func:`sample_conditions` draws
four particle species:

========  =================  ==========  ============  ==========================
regime    species            prob.       energy (GeV)  photon sum q05 - q95
========  =================  ==========  ============  ==========================
0 empty   photon / neutron   0.20        100 - 2500    0 - 5 (stray light only)
1 low     pi+ / pi-          0.30        30 - 200      37 - 204
2 medium  proton             0.35        500 - 2500    403 - 2080
3 high    alpha (Z = 2)      0.15        2000 - 5000   3166 - 7626
========  =================  ==========  ============  ==========================

(photon sums: 5% and 95% quantiles over 6,000 events, ``--conditions 1500 --repeats 4``.)

:func:`regime_of` reads the regime from the conditions alone (charge and mass): neutral particles
are not steered into the proton ZDC (only stray light reaches it); light charged particles give a
narrow, dim shower; protons a broad one whose light yield fluctuates most; doubly charged
fragments the brightest, with a Z^2-like light yield. Bounds on these quantiles are asserted
by ``tests/test_world_calorimeter.py``.

Shower model (per event, then per photon)
-----------------------------------------
* impact point on the front face (cm, face centred on the beam axis, 0.4 cm pixels like the real
  ZP's 22.4 x 12 cm face): straight line from the vertex over a lever arm of 112.5 m
  (``x = vx + (L - vz) px / pz``), plus, along the long (row) axis, a toy magnetic bend that
  depends on charge / momentum and saturates so that every charged species lands near the face:
  ``sign(q) * (-8 + 16 r / (1 + r))`` cm with ``r = |q| * 1000 GeV / pz``;
* an event-level jitter of that centre (where the hadronic shower starts), regime-dependent;
* the expected number of photons is ``yield(regime) * energy``, multiplied by a log-normal
  shower fluctuation (regime-dependent width); the number of photons is Poisson around that;
* every photon lands at the centre plus a draw from a core + halo profile: a Gaussian core of
  width ``0.3 + 0.3 sqrt(mass) (1000 / E)^0.1`` cm and, with probability
  ``0.15 + 0.15 tanh(mass)``, an exponential halo (radius ~ Gamma(2, 3 x core width));
* a Poisson number of stray photons uniform over the face (more for neutral particles);
* photons outside the face are lost; the rest are binned into the pixel grid.

Everything is drawn from one ``torch.Generator`` (deterministic for a seed), vectorised over
events and photons; the only Python loop is over chunks of at most a few million photons.

Images are ``float32`` photon counts (exact integers), shape ``(N, 56, 30)`` by default
(``shape=NEUTRON_SHAPE`` gives ``44 x 44`` on the same 0.4 cm pitch). Row index = the bending
(long) axis, column index = the other one.

Channels
--------
:func:`channel_sums` gives the 5-channel summary used by the ZDC papers' evaluation (the
``sum_channels_parallel`` of their code): the real ZDC routes alternate quartz fibres either to one
of four "tower" PMTs (one per quadrant) or to one common PMT. On the pixel grid: pixels with
``(row + col)`` even belong to the tower of their quadrant, split at ``rows // 2`` and
``cols // 2`` (channel 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right); pixels with
``(row + col)`` odd form channel 4, the common PMT, over the whole face.

Data sets
---------
:func:`generate_dataset` returns a dict of tensors (images, conditions, condition ids, regimes,
photon sums, channel sums, per-condition spread, brightest-pixel coordinates);
:func:`save_dataset` / :func:`load_dataset` write and read them as safetensors with JSON metadata
in the header. Nothing here ever unpickles: a file that is not safetensors is refused.

``python -m recipes.worlds.calorimeter --figure out.png`` draws example events per regime and
the photon-sum distribution per regime.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from typing import Any

import torch

__all__ = [
    "CONDITION_NAMES",
    "REGIMES",
    "SPECIES",
    "PROTON_SHAPE",
    "NEUTRON_SHAPE",
    "PIXEL_PITCH_CM",
    "FORMAT",
    "sample_conditions",
    "regime_of",
    "shower_parameters",
    "simulate",
    "channel_masks",
    "channel_sums",
    "photon_sums",
    "brightest_pixel",
    "generate_dataset",
    "dataset_metadata",
    "save_dataset",
    "load_dataset",
    "make_figure",
]

CONDITION_NAMES = ("energy", "vx", "vy", "vz", "px", "py", "pz", "mass", "charge")
REGIMES = ("empty", "low", "medium", "high")
PROTON_SHAPE = (56, 30)
NEUTRON_SHAPE = (44, 44)
PIXEL_PITCH_CM = 0.4
LEVER_ARM_CM = 11250.0  # the ZDCs sit 112.5 m from the interaction point
FORMAT = "interventions.worlds.calorimeter/1"

# Species drawn by sample_conditions: (name, mass GeV, |charge|, probability, E_min, E_max).
# Neutral: half photons (mass 0), half neutrons. Pions get a random charge sign.
SPECIES: tuple[tuple[str, float, float, float, float, float], ...] = (
    ("neutral", 0.93957, 0.0, 0.20, 100.0, 2500.0),
    ("pion", 0.13957, 1.0, 0.30, 30.0, 200.0),
    ("proton", 0.93827, 1.0, 0.35, 500.0, 2500.0),
    ("alpha", 3.72738, 2.0, 0.15, 2000.0, 5000.0),
)

# Per regime (empty, low, medium, high).
_YIELD_PER_GEV = (0.0, 1.0, 0.8, 1.6)  # mean photons per GeV reaching the face
_FLUCTUATION = (0.0, 0.12, 0.22, 0.08)  # sigma of the log-normal shower-light fluctuation
_JITTER_CM = (0.0, 0.15, 0.35, 0.20)  # event-to-event shift of the shower centre
_STRAY_CHARGED = 0.4  # mean stray photons per charged event
_STRAY_NEUTRAL = (1.0, 1.0e-3)  # neutral: 1 + 1e-3 * E photons, uniform over the face
_ANGLE_SIGMA = 1.2e-4  # rad, spread of the momentum direction
_VERTEX_SIGMA_CM = (0.3, 0.3, 8.0)
_BEND_P0 = 1000.0  # GeV
_MAX_PHOTONS_PER_CHUNK = 2_000_000


# --------------------------------------------------------------------------------------------
# conditions and regimes


def sample_conditions(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``n`` particle conditions, ``(n, 9)`` float32 in :data:`CONDITION_NAMES` order."""
    g = generator
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n == 0:
        return torch.zeros(0, len(CONDITION_NAMES), dtype=torch.float32)
    probs = torch.tensor([s[3] for s in SPECIES], dtype=torch.float64)
    species = torch.multinomial(probs, n, replacement=True, generator=g)
    table = torch.tensor([[s[1], s[2], s[4], s[5]] for s in SPECIES], dtype=torch.float64)
    mass, abs_charge, e_lo, e_hi = table[species].unbind(-1)
    u = torch.rand(n, 4, generator=g, dtype=torch.float64)
    energy = e_lo + (e_hi - e_lo) * u[:, 0]
    # neutral: half photons (massless), half neutrons
    is_photon = (species == 0) & (u[:, 1] < 0.5)
    mass = torch.where(is_photon, torch.zeros_like(mass), mass)
    # pions: random sign
    sign = torch.where((species == 1) & (u[:, 2] < 0.5), -1.0, 1.0).to(torch.float64)
    charge = abs_charge * sign
    vertex = torch.randn(n, 3, generator=g, dtype=torch.float64) * torch.tensor(_VERTEX_SIGMA_CM, dtype=torch.float64)
    theta = torch.randn(n, 2, generator=g, dtype=torch.float64) * _ANGLE_SIGMA
    p = torch.sqrt((energy**2 - mass**2).clamp_min(0.0))
    tx, ty = theta.unbind(-1)
    norm = torch.sqrt(1.0 + tx**2 + ty**2)
    px, py, pz = p * tx / norm, p * ty / norm, p / norm
    cond = torch.stack([energy, *vertex.unbind(-1), px, py, pz, mass, charge], dim=-1)
    return cond.to(torch.float32)


def regime_of(conditions: torch.Tensor) -> torch.Tensor:
    """Intensity regime (int64 index into :data:`REGIMES`) of each condition row.

    ``empty`` if neutral, ``high`` if ``|charge| >= 2``, else ``low`` for light particles
    (mass < 0.5 GeV) and ``medium`` for the others.
    """
    c = torch.as_tensor(conditions)
    charge = c[..., 8].abs()
    mass = c[..., 7]
    low_or_medium = torch.where(mass < 0.5, 1, 2)
    return torch.where(charge < 0.5, 0, torch.where(charge > 1.5, 3, low_or_medium)).to(torch.int64)


def shower_parameters(conditions: torch.Tensor, shape: tuple[int, int] = PROTON_SHAPE) -> dict[str, torch.Tensor]:
    """Per-event shower parameters (float64), before any randomness.

    Keys: ``regime``, ``centre_row`` / ``centre_col`` (pixel units, fractional, may lie off the
    face), ``mean_photons`` (before fluctuation and face losses), ``sigma_core`` and
    ``sigma_halo`` (pixels), ``halo_fraction``, ``fluctuation``, ``jitter`` (pixels),
    ``stray`` (mean stray photons).
    """
    c = torch.as_tensor(conditions).to(torch.float64)
    if c.ndim != 2 or c.shape[-1] != len(CONDITION_NAMES):
        raise ValueError(f"conditions must be (N, 9) {CONDITION_NAMES}, got {tuple(c.shape)}")
    energy, vx, vy, vz, px, py, pz, mass, charge = c.unbind(-1)
    regime = regime_of(c)
    pz_safe = pz.clamp_min(1e-6)
    lever = LEVER_ARM_CM - vz
    r = charge.abs() * _BEND_P0 / pz_safe
    bend = torch.sign(charge) * (-8.0 + 16.0 * r / (1.0 + r))
    x_cm = vx + lever * px / pz_safe + bend
    y_cm = vy + lever * py / pz_safe
    rows, cols = shape
    per = lambda values: torch.tensor(values, dtype=torch.float64)[regime]  # noqa: E731
    mass_pos = mass.clamp_min(0.0)
    sigma_core_cm = 0.30 + 0.30 * mass_pos.sqrt() * (1000.0 / energy.clamp_min(1.0)) ** 0.1
    stray = torch.where(
        regime == 0,
        _STRAY_NEUTRAL[0] + _STRAY_NEUTRAL[1] * energy.clamp_min(0.0),
        torch.full_like(energy, _STRAY_CHARGED),
    )
    return {
        "regime": regime,
        "centre_row": x_cm / PIXEL_PITCH_CM + rows / 2.0,
        "centre_col": y_cm / PIXEL_PITCH_CM + cols / 2.0,
        "mean_photons": per(_YIELD_PER_GEV) * energy.clamp_min(0.0),
        "sigma_core": sigma_core_cm / PIXEL_PITCH_CM,
        "sigma_halo": 3.0 * sigma_core_cm / PIXEL_PITCH_CM,
        "halo_fraction": 0.15 + 0.15 * torch.tanh(mass_pos),
        "fluctuation": per(_FLUCTUATION),
        "jitter": per(_JITTER_CM) / PIXEL_PITCH_CM,
        "stray": stray,
    }


# --------------------------------------------------------------------------------------------
# simulation


def _chunks(counts: torch.Tensor, limit: int) -> list[tuple[int, int]]:
    """Split events into consecutive chunks holding at most ``limit`` photons (>= 1 event)."""
    csum = counts.cumsum(0)
    out, start, n = [], 0, counts.numel()
    while start < n:
        base = int(csum[start - 1]) if start > 0 else 0
        end = int(torch.searchsorted(csum, torch.tensor(base + limit), right=True))
        end = max(end, start + 1)
        out.append((start, min(end, n)))
        start = end
    return out


def simulate(
    conditions: torch.Tensor,
    generator: torch.Generator | None = None,
    repeats: int = 1,
    shape: tuple[int, int] = PROTON_SHAPE,
) -> torch.Tensor:
    """Simulate photon-count images for ``conditions`` ``(N, 9)``.

    Returns float32 ``(N * repeats, rows, cols)``, condition-major: rows ``i * repeats`` to
    ``i * repeats + repeats - 1`` are independent events of condition ``i`` (reshape to
    ``(N, repeats, rows, cols)`` for per-condition statistics). Deterministic for the
    generator's state.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    rows, cols = (int(shape[0]), int(shape[1]))
    g = generator
    cond = torch.as_tensor(conditions).to(torch.float64)
    if repeats > 1:
        cond = cond.repeat_interleave(repeats, dim=0)
    par = shower_parameters(cond, (rows, cols))
    n = cond.shape[0]
    images = torch.zeros(n * rows * cols, dtype=torch.int64)
    if n == 0:
        return images.view(0, rows, cols).to(torch.float32)

    # event level: light fluctuation, centre jitter, photon counts
    z = torch.randn(n, 3, generator=g, dtype=torch.float64)
    s = par["fluctuation"]
    light = par["mean_photons"] * torch.exp(s * z[:, 0] - 0.5 * s**2)
    centre_r = par["centre_row"] + par["jitter"] * z[:, 1]
    centre_c = par["centre_col"] + par["jitter"] * z[:, 2]
    n_shower = torch.poisson(light, generator=g).to(torch.int64)
    n_stray = torch.poisson(par["stray"], generator=g).to(torch.int64)

    pixels = rows * cols
    f32 = torch.float32
    centre_r, centre_c = centre_r.to(f32), centre_c.to(f32)
    sigma_core, sigma_halo = par["sigma_core"].to(f32), par["sigma_halo"].to(f32)
    halo_fraction = par["halo_fraction"].to(f32)
    for start, end in _chunks(n_shower, _MAX_PHOTONS_PER_CHUNK):
        counts = n_shower[start:end]
        total = int(counts.sum())
        if total == 0:
            continue
        ev = torch.repeat_interleave(torch.arange(end - start), counts) + start
        gauss = torch.randn(2, total, generator=g, dtype=f32)
        u = torch.rand(4, total, generator=g, dtype=f32)
        halo = u[0] < halo_fraction[ev]
        # halo radius ~ Gamma(2, sigma_halo) = -sigma_halo * log(u1 * u2), u in (0, 1]
        radius = -sigma_halo[ev] * torch.log((1.0 - u[1]) * (1.0 - u[2]))
        phi = (2.0 * math.pi) * u[3]
        core = sigma_core[ev]
        dr = torch.where(halo, radius * torch.cos(phi), core * gauss[0])
        dc = torch.where(halo, radius * torch.sin(phi), core * gauss[1])
        r = torch.floor(centre_r[ev] + dr)
        c = torch.floor(centre_c[ev] + dc)
        inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
        local = (ev[inside] - start) * pixels + (r[inside] * cols + c[inside]).to(torch.int64)
        images[start * pixels : end * pixels] += torch.bincount(local, minlength=(end - start) * pixels)

    total_stray = int(n_stray.sum())
    if total_stray:
        ev = torch.repeat_interleave(torch.arange(n), n_stray)
        pix = torch.randint(0, pixels, (total_stray,), generator=g)
        images += torch.bincount(ev * pixels + pix, minlength=n * pixels)
    return images.view(n, rows, cols).to(torch.float32)


# --------------------------------------------------------------------------------------------
# summaries


def channel_masks(shape: tuple[int, int] = PROTON_SHAPE) -> torch.Tensor:
    """The 5 channel masks ``(5, rows, cols)`` (float32, 0/1, a partition of the face).

    Even ``(row + col)``: the tower PMT of the pixel's quadrant (0 top-left, 1 top-right,
    2 bottom-left, 3 bottom-right; split at ``rows // 2``, ``cols // 2``); odd: the common PMT (4).
    """
    rows, cols = int(shape[0]), int(shape[1])
    r = torch.arange(rows).view(-1, 1)
    c = torch.arange(cols).view(1, -1)
    even = (r + c) % 2 == 0
    top, left = r < rows // 2, c < cols // 2
    masks = torch.stack([even & top & left, even & top & ~left, even & ~top & left, even & ~top & ~left, ~even])
    return masks.to(torch.float32)


def channel_sums(images: torch.Tensor) -> torch.Tensor:
    """5-channel photon sums ``(..., 5)`` of images ``(..., rows, cols)`` (see module doc)."""
    x = images if images.is_floating_point() else images.to(torch.float64)
    masks = channel_masks(tuple(x.shape[-2:])).to(dtype=x.dtype, device=x.device)
    return torch.einsum("...hw,chw->...c", x, masks)


def photon_sums(images: torch.Tensor) -> torch.Tensor:
    """Total photons per image, ``(...)``."""
    return images.sum(dim=(-2, -1))


def brightest_pixel(images: torch.Tensor) -> torch.Tensor:
    """``(..., 2)`` int64 (row, col) of each image's brightest pixel (first on ties)."""
    rows, cols = images.shape[-2:]
    idx = images.flatten(-2).argmax(-1)
    return torch.stack([idx // cols, idx % cols], dim=-1)


# --------------------------------------------------------------------------------------------
# data sets


def generate_dataset(
    n_conditions: int,
    repeats: int = 4,
    generator: torch.Generator | None = None,
    shape: tuple[int, int] = PROTON_SHAPE,
) -> dict[str, torch.Tensor]:
    """Sample conditions and simulate ``repeats`` events each.

    Returns tensors with leading dimension ``n_conditions * repeats`` (condition-major):
    ``images`` float32 ``(M, rows, cols)``, ``conditions`` float32 ``(M, 9)``, ``condition_id``,
    ``regime`` int64 ``(M,)``, ``photon_sum`` float32 ``(M,)``, ``channel_sums`` float32
    ``(M, 5)``, ``photon_sum_std`` float32 ``(M,)`` (the std over the repeats of the event's
    condition, unbiased; 0 if ``repeats == 1``; the papers' ``std_proton`` analogue) and
    ``brightest`` int64 ``(M, 2)`` (row, col; the papers' ``max_x``, ``max_y``).
    """
    cond = sample_conditions(n_conditions, generator)
    images = simulate(cond, generator, repeats=repeats, shape=shape)
    sums = photon_sums(images)
    per_cond = sums.view(n_conditions, repeats)
    std = per_cond.std(dim=1) if repeats > 1 else torch.zeros(n_conditions)
    return {
        "images": images,
        "conditions": cond.repeat_interleave(repeats, dim=0),
        "condition_id": torch.arange(n_conditions).repeat_interleave(repeats),
        "regime": regime_of(cond).repeat_interleave(repeats),
        "photon_sum": sums,
        "channel_sums": channel_sums(images),
        "photon_sum_std": std.repeat_interleave(repeats),
        "brightest": brightest_pixel(images),
    }


_PICKLE_HINTS = (
    (b"\x80", "it starts like a Python pickle"),
    (b"PK\x03\x04", "it is a zip archive (a torch.save / .npz file?)"),
    (b"\x93NUMPY", "it is a .npy file"),
)


def _check_safetensors(path: str | os.PathLike) -> None:
    """Raise ValueError unless ``path`` has a well-formed safetensors header (no unpickling)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        why = None
        for magic, hint in _PICKLE_HINTS:
            if head.startswith(magic):
                why = hint
                break
        if why is None and len(head) < 8:
            why = "it is too short"
        if why is None:
            (n,) = struct.unpack("<Q", head)
            if n < 2 or n > size - 8 or n > 100_000_000:
                why = "its header length is implausible"
            else:
                raw = f.read(n)
                try:
                    header = json.loads(raw.decode("utf-8"))
                    if not isinstance(header, dict):
                        raise ValueError
                except (UnicodeDecodeError, ValueError):
                    why = "its header is not JSON"
    if why is not None:
        raise ValueError(
            f"refusing to load {os.fspath(path)!r}: not a safetensors file ({why}). Calorimeter "
            "data sets are only read from safetensors; pickles are never loaded."
        )


def _is_count_image(t: torch.Tensor) -> bool:
    return (
        t.is_floating_point()
        and t.numel() > 0
        and bool(torch.isfinite(t).all())
        and bool((t >= 0).all())
        and bool((t <= 32767).all())
        and bool((t == t.round()).all())
        and not bool(torch.signbit(t).any())
    )


def save_dataset(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write a data set as safetensors, with ``metadata`` (JSON-serialisable) in the header.

    Float ``images`` holding photon counts are stored as int16 (half the size) and restored to
    their dtype by :func:`load_dataset`, bit for bit.
    """
    from safetensors.torch import save_file

    meta = dict(metadata or {})
    stored: dict[str, torch.Tensor] = {}
    cast: dict[str, str] = {}
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{key!r}: expected a torch.Tensor, got {type(value).__name__}")
        t = value.detach().cpu().contiguous()
        if key == "images" and t.dtype in (torch.float32, torch.float64) and _is_count_image(t):
            cast[key] = str(t.dtype).removeprefix("torch.")
            t = t.to(torch.int16)
        stored[key] = t
    header = {
        "format": "pt",
        "interventions.format": FORMAT,
        "interventions.metadata": json.dumps(meta, sort_keys=True),
        "interventions.cast": json.dumps(cast, sort_keys=True),
    }
    save_file(stored, os.fspath(path), metadata=header)


def load_dataset(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a data set written by :func:`save_dataset`: ``(tensors, metadata)``.

    Refuses (ValueError) anything that is not a safetensors file, and safetensors files that
    are not calorimeter data sets.
    """
    from safetensors import safe_open

    _check_safetensors(path)
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(os.fspath(path), framework="pt") as f:
        header = f.metadata() or {}
        if header.get("interventions.format") != FORMAT:
            raise ValueError(
                f"{os.fspath(path)!r} is a safetensors file but not a calorimeter data set "
                f"(header 'interventions.format' is {header.get('interventions.format')!r}, "
                f"expected {FORMAT!r})"
            )
        for key in f.keys():
            tensors[key] = f.get_tensor(key)
    cast = json.loads(header.get("interventions.cast", "{}"))
    for key, dtype in cast.items():
        tensors[key] = tensors[key].to(getattr(torch, dtype))
    return tensors, json.loads(header.get("interventions.metadata", "{}"))


def dataset_metadata(n_conditions: int, repeats: int, seed: int | None, shape: tuple[int, int]) -> dict[str, Any]:
    """The JSON metadata :func:`save_dataset` is given by the command line."""
    return {
        "world": "calorimeter",
        "format": FORMAT,
        "n_conditions": n_conditions,
        "repeats": repeats,
        "seed": seed,
        "shape": list(shape),
        "pixel_pitch_cm": PIXEL_PITCH_CM,
        "condition_names": list(CONDITION_NAMES),
        "regimes": list(REGIMES),
        "channels": "0-3: (row+col) even, quadrants TL TR BL BR split at rows//2, cols//2; 4: (row+col) odd",
    }


# --------------------------------------------------------------------------------------------
# figure and command line


def make_figure(
    path: str | os.PathLike,
    n_conditions: int = 1500,
    repeats: int = 4,
    seed: int = 0,
    shape: tuple[int, int] = PROTON_SHAPE,
    data: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Example events per regime, photon-sum histograms and per-condition spread, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if data is None:
        data = generate_dataset(n_conditions, repeats, torch.Generator().manual_seed(seed), shape)
    images, regime, sums = data["images"], data["regime"], data["photon_sum"]
    std = data["photon_sum_std"]
    colours = ("tab:gray", "tab:blue", "tab:orange", "tab:red")
    n_ex = 3
    fig = plt.figure(figsize=(12, 11))
    grid = fig.add_gridspec(n_ex + 2, len(REGIMES), height_ratios=[1] * n_ex + [0.15, 1.2])
    for k, name in enumerate(REGIMES):
        idx = torch.nonzero(regime == k).flatten()
        for j in range(n_ex):
            ax = fig.add_subplot(grid[j, k])
            if j < idx.numel():
                # the first repeat of different conditions
                i = int(idx[(j * repeats) % max(idx.numel(), 1)])
                ax.imshow(images[i].numpy(), cmap="magma", aspect="equal")
                ax.set_title(f"{name}: {int(sums[i])} photons", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    ax = fig.add_subplot(grid[n_ex + 1, :2])
    bins = torch.logspace(0, math.log10(max(float(sums.max()), 10.0) * 1.2), 60).numpy()
    for k, name in enumerate(REGIMES):
        s = sums[regime == k].numpy() + 1.0
        ax.hist(s, bins=bins, alpha=0.6, color=colours[k], label=f"{name} (n={s.size})")
    ax.set_xscale("log")
    ax.set_xlabel("photon sum + 1")
    ax.set_ylabel("events")
    ax.set_title("photon-sum distribution per regime")
    ax.legend(fontsize=8)
    ax = fig.add_subplot(grid[n_ex + 1, 2:])
    first = torch.arange(0, sums.numel(), max(repeats, 1))
    mean = sums.view(-1, max(repeats, 1)).mean(1)
    for k, name in enumerate(REGIMES):
        sel = regime[first] == k
        ax.scatter(mean[sel] + 1, std[first][sel] + 1e-1, s=4, color=colours[k], label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("per-condition mean photon sum + 1")
    ax.set_ylabel("per-condition std")
    ax.set_title(f"per-condition spread ({repeats} events per condition)")
    ax.legend(fontsize=8)
    fig.suptitle(f"calorimeter world: {shape[0]}x{shape[1]}, seed {seed}")
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=110)
    plt.close(fig)
    return dict(data)


def _summary(data: Mapping[str, torch.Tensor]) -> str:
    lines = []
    qs = torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)
    for k, name in enumerate(REGIMES):
        sel = data["regime"] == k
        s = data["photon_sum"][sel].to(torch.float64)
        if s.numel() == 0:
            continue
        q = torch.quantile(s, qs).tolist()
        sd = data["photon_sum_std"][sel].to(torch.float64).mean().item()
        lines.append(
            f"{name:>6}: n={s.numel():5d}  photon sum q05/q50/q95 = "
            f"{q[0]:.0f}/{q[1]:.0f}/{q[2]:.0f}  mean per-condition std = {sd:.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import argparse
    import time

    parser = argparse.ArgumentParser(prog="python -m recipes.worlds.calorimeter", description=__doc__.split("\n")[0])
    parser.add_argument("--figure", help="write the example / distribution figure (PNG)")
    parser.add_argument("--dataset", help="write a data set (safetensors)")
    parser.add_argument("--conditions", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", choices=("proton", "neutron"), default="proton")
    args = parser.parse_args(argv)
    shape = PROTON_SHAPE if args.shape == "proton" else NEUTRON_SHAPE
    t0 = time.perf_counter()
    data = generate_dataset(args.conditions, args.repeats, torch.Generator().manual_seed(args.seed), shape)
    dt = time.perf_counter() - t0
    n = data["images"].shape[0]
    print(f"{n} events in {dt:.2f} s ({n / dt:.0f} events/s)")
    print(_summary(data))
    if args.dataset:
        meta = dataset_metadata(args.conditions, args.repeats, args.seed, shape)
        save_dataset(args.dataset, data, meta)
        print(f"wrote {args.dataset}")
    if args.figure:
        make_figure(args.figure, args.conditions, args.repeats, args.seed, shape, data=data)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
