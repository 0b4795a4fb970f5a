"""``interventions demo``: what the package is for, in one offline run and one HTML report.

On the shipped shapes world (a tiny ``StableDiffusionPipeline``) it localizes where a concept
enters the UNet with :func:`interventions.patching_sweep` over every cross-attention layer and
denoising step (TADA's localisation), steers it with a contrastive
:class:`~interventions.steering.SteeringVector` at the localized layer, and unlearns a style with
:mod:`recipes.saeuron`; on the tones world (a tiny ``StableAudioDiTModel``) the same localization
and steering with ``<audio>`` players. ``--model`` runs the image steps on a real Stable Diffusion
1.5 checkpoint instead. :mod:`.cli` parses and checks the command line, :mod:`.steps` holds the
model-agnostic steps, :mod:`.worlds` the tasks, :mod:`.run` the report's sections.
"""

from .cli import main

__all__ = ["main"]
