"""SAeUron (arXiv 2501.18052): concept unlearning with sparse autoencoders, on the shapes world.

The paper's procedure on the tiny shapes ``StableDiffusionPipeline``:

1. cache a cross-attention block's output over every DDIM step (cond branch) in a ``DiskStore``
   and train a TopK SAE on it (BatchTopK in training, AuxK, unit-norm decoder): :mod:`.train`;
   one block for styles, one for shapes, as the paper uses one per kind;
2. score features per step by the normalised difference of each concept's mean latent against the
   others and keep those above a percentile (:func:`interventions.scores.normalized_difference_by_step`);
3. unlearn by scaling the selected features on the tokens where they fire above their mean, per step,
   on both CFG branches, inside ``SAEEdit`` (error term kept): :mod:`.unlearn`; for shapes the
   shipped default adds a presence gate (an image is edited only while its selected features add up
   to half the concept's mean), which the paper does not have (``gate=0`` is the paper's edit);
   for styles the shipped default *redirects* instead (not in the paper): every image has a style
   here, and removing a style's features leaves the network's default style, so the images that a
   ridge probe on their latents assigns a removed style are shifted, by the same length for every
   style, toward the most distant kept style's mean latents among the prompts of the image's colour
   (a second probe names it) (``strength=0`` is the paper's edit);
4. score UA / IRA / CRA with the world's evaluators, and a feature distance, against a negative
   prompt and whole-block ablation on the same prompts and seeds: :mod:`.evaluate`, :mod:`.run`.

``interventions run saeuron`` runs the evaluation; :class:`SAeUron` is the Python entry point.
SAEs published in sparsify's layout (the authors' ``bcywinski/SAeUron``) load with
:func:`interventions.sae_sparsify.load_sparsify`.
"""

from .concepts import PromptSet, canonical, paraphrase
from .recipe import CHECKPOINT, DEFAULTS, MATCH, METHODS, REDIRECT, SAeUron, Statistics
from .unlearn import Redirect, Unlearning, redirect, select

__all__ = [
    "CHECKPOINT",
    "DEFAULTS",
    "MATCH",
    "METHODS",
    "PromptSet",
    "REDIRECT",
    "Redirect",
    "SAeUron",
    "Statistics",
    "Unlearning",
    "canonical",
    "paraphrase",
    "redirect",
    "select",
]
