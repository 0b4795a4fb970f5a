"""Mediffusion (arXiv 2411.09434): a joint diffusion classifier trained semi-supervised with
FixMatch, and counterfactual explanations by classifier-guided denoising. Run it with
``interventions run mediffusion``; results in ``recipes/results/README.md``."""
