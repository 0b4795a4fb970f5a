"""Choosing task identifiers that the frozen text encoder keeps apart, from the encoder alone.

DreamBooth binds a subject to a rare word. Task vectors can only live in different directions
(what merge methods rely on) if the frozen text encoder gives the identifiers different
directions, away from the class words too. Measured here: the encoder output at the identifier
token of ``"a <word>"`` for every word of the world's tokenizer. The raw outputs share one large
common direction (every pair's cosine is 0.90-1.00; their mean has 99.4 % of their norm), so
words are compared by the cosine of their *centred* outputs (the mean over the words
subtracted), which is what tells them apart. (The LoRA itself multiplies the raw outputs: on
the shapes world, identifiers far apart by this measure still forget; see the results README.)

:func:`choose_identifiers` is the rule: among the candidates (every vocabulary word except the
structural tokens and the class words with their synonyms), the ``k`` words whose largest
cosine -- to each other and to every class word -- is smallest (exhaustive search; ties broken
by the sorted cosines, then vocabulary order). It reads the encoder only, never a trained model.

>>> from recipes.worlds.shapes_model import load_pipeline  # doctest: +SKIP
>>> choose_identifiers(load_pipeline(), 4)  # doctest: +SKIP
('in', 'red', 'green', 'yellow')
"""

from __future__ import annotations

from itertools import combinations

import torch

from recipes.worlds import shapes as world

from .train import encode

__all__ = ["STRUCTURAL", "candidate_words", "class_words", "identifier_vectors", "cosines", "choose_identifiers"]

#: tokens that frame every prompt; never identifiers
STRUCTURAL = ("<pad>", "<bos>", "<eos>")


def class_words() -> tuple[str, ...]:
    """Every word that names a shape (the class words and their synonyms)."""
    return tuple(w for words in world.SYNONYMS["shape"].values() for w in words)


def candidate_words() -> tuple[str, ...]:
    """Vocabulary words that may become identifiers: neither structural nor a shape's name."""
    excluded = set(STRUCTURAL) | set(class_words())
    return tuple(w for w in world.vocabulary() if w not in excluded)


def identifier_vectors(pipe, words: tuple[str, ...]) -> torch.Tensor:
    """``len(words) x dim``: the frozen encoder's output at the word's token in ``"a <word>"``."""
    position = 2  # <bos> a <word>
    return torch.stack([encode(pipe, f"a {w}")[0, position] for w in words])


def cosines(vectors: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine of the rows after subtracting their mean (the shared direction)."""
    if vectors.ndim != 2 or len(vectors) < 2:
        raise ValueError(f"expected at least two row vectors (n x dim), got shape {tuple(vectors.shape)}")
    centred = vectors - vectors.mean(0)
    unit = centred / centred.norm(dim=1, keepdim=True)
    return unit @ unit.T


def choose_identifiers(pipe, k: int) -> tuple[str, ...]:
    """The ``k`` candidate words (vocabulary order) whose largest centred cosine to each other and
    to any class word is smallest. Centring uses candidates and class words together."""
    candidates, classes = candidate_words(), class_words()
    if not 1 <= k <= len(candidates):
        raise ValueError(f"k must be between 1 and {len(candidates)} (the candidate words), got {k}")
    words = candidates + classes
    C = cosines(identifier_vectors(pipe, words))
    n = len(candidates)
    to_class = C[:n, n:].max(1).values  # each candidate's closest class word
    best: tuple[list[float], tuple[int, ...]] | None = None
    for subset in combinations(range(n), k):
        pairs = [C[i, j].item() for i, j in combinations(subset, 2)]
        worst = sorted(pairs + [to_class[i].item() for i in subset], reverse=True)
        if best is None or worst < best[0]:
            best = (worst, subset)
    assert best is not None
    return tuple(candidates[i] for i in best[1])
