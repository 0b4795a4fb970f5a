"""The complexity column: how much a prompt leaves the regeneration to vary, as the median norm of
its concept-token gradients.

Why the size of the gradients: each gradient is ``d dist(x0(A), B) / d e_tok``, how the concept
token would have to move for the regenerated A to become another sample B. A prompt that fixes
every factor the token controls leaves A and B differing only in what the token cannot move (with
the canonical distance, position and size are factored out too), so moving the token barely
changes the distance and the gradient is small; each factor the prompt leaves open adds a
difference the token can close, and the gradient grows. The paper's counts (components to 95%,
the spectral gap) are blind to scale: they cannot say that nothing varies. The median, not the
mean, because a few pairs whose B is far from the regenerated A make the norms heavy-tailed.

>>> import torch
>>> gradient_spread(torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 100.0]]))
5.0
>>> ladder_holds({"a": 3.0, "a circle": 2.0, "a striped circle": 2.0}, ["a", "a circle", "a striped circle"])
False
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from torch import Tensor


def gradient_spread(grads: Tensor) -> float:
    """The complexity column: the median L2 norm of the gradients (rows)."""
    if grads.ndim != 2 or len(grads) == 0:
        raise ValueError(f"gradient_spread needs a non-empty (pairs x D) matrix, got shape {tuple(grads.shape)}")
    return float(grads.double().norm(dim=1).median())


def total_variance(grads: Tensor) -> float:
    """Mean squared distance of the gradients to their mean (the trace of their covariance)."""
    g = grads.double()
    return float((g - g.mean(0)).pow(2).sum(1).mean())


def ladder_holds(column: dict[str, float], ladder: list[str]) -> bool:
    """The decision rule: the column falls strictly along ``ladder`` (most free factors first)."""
    if missing := [p for p in ladder if p not in column]:
        raise ValueError(f"the column has no value for {missing}: run those prompts too")
    return all(column[a] > column[b] for a, b in pairwise(ladder))


def complexity_table(result: dict[str, Any]) -> str:
    """Markdown table of a :func:`recipes.elrond.experiment.measure` result: per prompt, the
    complexity column beside the paper's components to 95% and spectral gap, one value per seed."""
    seeds = [str(s) for s in result["seeds"]]
    rows = [
        f"| prompt | complexity: median gradient norm x 1e-3, seeds {' / '.join(seeds)} "
        "| components to 95% | spectral gap |",
        "|---|---|---|---|",
    ]
    for prompt, entry in result["prompts"].items():
        c = {str(k): v for k, v in entry["complexity"].items()}
        cells = [
            " / ".join(f"{c[s]['median_norm'] * 1e3:.2f}" for s in seeds),
            " / ".join(str(c[s]["components_95"]) for s in seeds),
            " / ".join(str(c[s]["spectral_gap"]) for s in seeds),
        ]
        rows.append(f"| {prompt!r} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
