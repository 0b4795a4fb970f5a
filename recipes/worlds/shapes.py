"""The shapes world: procedural 16x16 RGB images with known, independent factors.

Factors (each uniform and independent of the others):

- ``shape``:  circle, square, triangle, cross
- ``colour``: red, green, blue, yellow (saturated)
- ``style``:  solid, stripes, dots, checker (a texture inside the shape: "on" pixels in full
  colour, "off" pixels in the same colour at 45% brightness, so the silhouette stays visible)
- nuisance: centre position (continuous, the shape stays inside the frame) and size.

Images live in ``[-1, 1]`` (black background = -1), shape ``B x 3 x 16 x 16``. Rendering is
vectorised in torch and deterministic for a ``torch.Generator``.

Prompts are short word sequences with a few synonyms per concept and three templates, e.g.
``"a red circle in striped style"``, ``"a dotted crimson box"``, ``"golden cross checkered"``.
:func:`build_tokenizer` makes a word-level tokenizer offline (``tokenizers`` WordLevel inside a
``PreTrainedTokenizerFast`` with a ``<bos> $A <eos>`` template) that works inside diffusers'
``StableDiffusionPipeline``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .text import word_level_tokenizer

__all__ = [
    "SIZE",
    "SHAPES",
    "COLOURS",
    "STYLES",
    "FACTORS",
    "SYNONYMS",
    "TEMPLATES",
    "MAX_LENGTH",
    "ShapesBatch",
    "sample_factors",
    "render",
    "sample",
    "make_prompt",
    "make_prompts",
    "parse_prompt",
    "vocabulary",
    "build_tokenizer",
]

SIZE = 16
SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = ("red", "green", "blue", "yellow")
STYLES = ("solid", "stripes", "dots", "checker")
FACTORS: dict[str, tuple[str, ...]] = {"shape": SHAPES, "colour": COLOURS, "style": STYLES}

# Words that name each concept in prompts; the first is the canonical one.
SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "shape": {
        "circle": ("circle", "disk"),
        "square": ("square", "box"),
        "triangle": ("triangle", "pyramid"),
        "cross": ("cross", "plus"),
    },
    "colour": {
        "red": ("red", "crimson"),
        "green": ("green", "emerald"),
        "blue": ("blue", "azure"),
        "yellow": ("yellow", "golden"),
    },
    "style": {
        "solid": ("solid", "plain"),
        "stripes": ("striped", "stripy"),
        "dots": ("dotted", "spotted"),
        "checker": ("checkered", "chequered"),
    },
}
TEMPLATES = (
    "a {colour} {shape} in {style} style",
    "a {style} {colour} {shape}",
    "{colour} {shape} {style}",
)
# <bos> + at most 6 words + <eos>
MAX_LENGTH = 8
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")

_RGB = torch.tensor(
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]
)  # in [0, 1], one row per colour
_DIM = 0.45  # brightness of "off" texture pixels
_R_MIN, _R_MAX = 3.5, 5.0  # size (radius-like) range in pixels
# Half-extent of each shape in units of its size, used to keep it inside the frame.
_EXTENT = torch.tensor([1.0, 0.9, 1.2, 1.0])


@dataclass
class ShapesBatch:
    """A batch of world samples: images in [-1, 1] and their ground-truth factors."""

    images: torch.Tensor  # B x 3 x 16 x 16
    shape: torch.Tensor  # B, long
    colour: torch.Tensor  # B, long
    style: torch.Tensor  # B, long
    cx: torch.Tensor  # B, float, pixel units
    cy: torch.Tensor
    size: torch.Tensor
    prompts: list[str]

    def labels(self) -> dict[str, torch.Tensor]:
        return {"shape": self.shape, "colour": self.colour, "style": self.style}


def sample_factors(n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Independent uniform draws of every factor, nuisances included."""
    g = generator
    shape = torch.randint(len(SHAPES), (n,), generator=g)
    colour = torch.randint(len(COLOURS), (n,), generator=g)
    style = torch.randint(len(STYLES), (n,), generator=g)
    size = _R_MIN + (_R_MAX - _R_MIN) * torch.rand(n, generator=g)
    ext = _EXTENT[shape] * size
    lo, hi = ext, SIZE - ext
    cx = lo + (hi - lo) * torch.rand(n, generator=g)
    cy = lo + (hi - lo) * torch.rand(n, generator=g)
    return {"shape": shape, "colour": colour, "style": style, "cx": cx, "cy": cy, "size": size}


def _masks(shape: torch.Tensor, cx, cy, size) -> torch.Tensor:
    """B x 16 x 16 boolean silhouettes."""
    coords = torch.arange(SIZE, dtype=torch.float32) + 0.5
    dx = coords[None, None, :] - cx[:, None, None]
    dy = coords[None, :, None] - cy[:, None, None]
    r = size[:, None, None]
    adx, ady = dx.abs(), dy.abs()
    circle = dx * dx + dy * dy <= r * r
    square = torch.maximum(adx, ady) <= 0.9 * r
    # upward triangle: apex at dy = -1.2 r, base at dy = +0.9 r
    tri = (dy <= 0.9 * r) & (dy >= -1.2 * r) & (adx <= (dy + 1.2 * r) * 0.62)
    arm = 0.42 * r
    cross = ((adx <= arm) & (ady <= r)) | ((ady <= arm) & (adx <= r))
    all_masks = torch.stack([circle, square, tri, cross], dim=1)  # B x 4 x H x W
    return all_masks.gather(1, shape[:, None, None, None].expand(-1, 1, SIZE, SIZE))[:, 0]


def _patterns() -> torch.Tensor:
    """4 x 16 x 16 boolean textures on the absolute pixel grid ("on" pixels)."""
    y = torch.arange(SIZE)[:, None].expand(SIZE, SIZE)
    x = torch.arange(SIZE)[None, :].expand(SIZE, SIZE)
    solid = torch.ones(SIZE, SIZE, dtype=torch.bool)
    stripes = (y // 2) % 2 == 0
    dots = (x % 3 == 1) & (y % 3 == 1)
    checker = ((x // 2) + (y // 2)) % 2 == 0
    return torch.stack([solid, stripes, dots, checker])


_PATTERNS = _patterns()


def render(shape, colour, style, cx, cy, size) -> torch.Tensor:
    """Render factor tensors (each of length B) to B x 3 x 16 x 16 images in [-1, 1]."""
    mask = _masks(shape, cx.float(), cy.float(), size.float())
    on = _PATTERNS[style]  # B x H x W
    bright = torch.where(on, 1.0, _DIM) * mask  # B x H x W in {0, 0.3, 1}
    rgb = _RGB[colour]  # B x 3
    img = bright[:, None] * rgb[:, :, None, None]
    return img * 2.0 - 1.0


def make_prompt(shape: int, colour: int, style: int, template: int = 0, synonyms=(0, 0, 0)) -> str:
    """Words for one factor combination; ``synonyms`` picks (shape, colour, style) word indices."""
    words = {
        "shape": SYNONYMS["shape"][SHAPES[shape]][synonyms[0]],
        "colour": SYNONYMS["colour"][COLOURS[colour]][synonyms[1]],
        "style": SYNONYMS["style"][STYLES[style]][synonyms[2]],
    }
    return TEMPLATES[template].format(**words)


def make_prompts(shape, colour, style, generator: torch.Generator | None = None, paraphrase: bool = True) -> list[str]:
    """Prompts for factor tensors. With ``paraphrase`` the template and synonyms are random
    (drawn from ``generator``); otherwise the canonical template and words are used."""
    n = len(shape)
    if paraphrase:
        tmpl = torch.randint(len(TEMPLATES), (n,), generator=generator).tolist()
        syn = torch.randint(2, (n, 3), generator=generator).tolist()
    else:
        tmpl, syn = [0] * n, [(0, 0, 0)] * n
    return [
        make_prompt(int(s), int(c), int(t), tmpl[i], syn[i])
        for i, (s, c, t) in enumerate(zip(shape.tolist(), colour.tolist(), style.tolist(), strict=False))
    ]


def sample(n: int, generator: torch.Generator | None = None, paraphrase: bool = True) -> ShapesBatch:
    """Draw ``n`` images with their factors and prompts, deterministically for ``generator``."""
    f = sample_factors(n, generator)
    images = render(f["shape"], f["colour"], f["style"], f["cx"], f["cy"], f["size"])
    prompts = make_prompts(f["shape"], f["colour"], f["style"], generator, paraphrase)
    return ShapesBatch(images=images, prompts=prompts, **f)


_WORD_TO_FACTOR = {
    word: (factor, FACTORS[factor].index(value))
    for factor, table in SYNONYMS.items()
    for value, words in table.items()
    for word in words
}


def parse_prompt(prompt: str) -> dict[str, int | None]:
    """Ground-truth factor indices named in a prompt (None for a factor it does not name)."""
    out: dict[str, int | None] = {f: None for f in FACTORS}
    for word in prompt.lower().split():
        if word in _WORD_TO_FACTOR:
            factor, idx = _WORD_TO_FACTOR[word]
            out[factor] = idx
    return out


def vocabulary() -> dict[str, int]:
    """Token ids: the special tokens, then the template words, then every concept word."""
    words = list(SPECIAL_TOKENS)
    for t in TEMPLATES:
        for w in t.split():
            if not w.startswith("{") and w not in words:
                words.append(w)
    for table in SYNONYMS.values():
        for ws in table.values():
            words.extend(w for w in ws if w not in words)
    return {w: i for i, w in enumerate(words)}


def build_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` built offline (no download).

    ``<bos> $A <eos>``, padded with ``<pad>`` to ``MAX_LENGTH`` by the pipeline; unknown words map
    to ``<unk>``.
    """
    return word_level_tokenizer(vocabulary(), MAX_LENGTH)
