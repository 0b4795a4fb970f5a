"""TADA (arXiv 2602.11910; code luk-st/steer-audio): localise a concept in a text-to-audio
diffusion transformer by patching one cross-attention layer's conditioning at every step, then
steer it there with per-step CAA vectors or SAE features.

- :mod:`recipes.tada.tones`: the tones world as TADA sees it (prompt pairs, sampling, probes);
- :func:`localize` (:mod:`recipes.tada.localize`): the patching sweep per block and step window,
  and the cond-only zero-ablation; :func:`recipes.tada.shapes.localize_shapes` for the shapes UNet;
- :func:`caa_vectors`, :func:`caa_curve`, :func:`steering_curve` (:mod:`recipes.tada.caa`);
- :func:`train_layer_sae`, :func:`feature_scores`, :func:`sae_hooks` (:mod:`recipes.tada.sae_steer`);
- :mod:`recipes.tada.ground_truth`: the shipped model in which only block 2 sees timbre;
- :mod:`recipes.tada.pipeline`: Stable Audio Open (a ``StableAudioPipeline``) through the same functions;
- :mod:`recipes.tada.sat`: a stable-audio-tools DiT (``ConditionedDiffusionModelWrapper``, Stable
  Audio Open in the authors' format) through the same functions;
- :class:`recipes.tada.shapes.ShapesModel`: CAA on the shapes UNet through the same functions;
- :mod:`recipes.tada.run`: ``interventions run tada``.

Example::

    from recipes.tada import caa_curve, caa_vectors, localize
    from recipes.worlds.tones_model import load_model

    model = load_model()
    loc = localize(model, "vocals", ("vocals", "instrumental"))  # loc.ranking()[0] == 2
    vec = caa_vectors(model, "vocals", ("instrumental", "vocals"), layers=loc.ranking()[:1])
    curve = caa_curve(model, vec, [1, 2, 4], steps=20)  # target / kept per strength
"""

from .caa import SteeringCurve, caa_curve, caa_vectors, restrict, steering_curve
from .localize import Localisation, cross_attn_inputs, cross_attn_output, localize
from .sae_steer import feature_scores, sae_hooks, top_features_by_step, train_layer_sae

__all__ = [
    "Localisation",
    "SteeringCurve",
    "caa_curve",
    "caa_vectors",
    "cross_attn_inputs",
    "cross_attn_output",
    "feature_scores",
    "localize",
    "restrict",
    "sae_hooks",
    "steering_curve",
    "top_features_by_step",
    "train_layer_sae",
]
