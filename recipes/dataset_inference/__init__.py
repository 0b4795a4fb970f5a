"""Membership and dataset inference on diffusion models ("Membership and Dataset Inference
Attacks on Large Audio Generative Models", arXiv 2512.09654).

Modules, each with one job:

- :mod:`.catalogue`: the catalogue world (tones clips with per-note velocities, so that every clip
  is unique) and the member set of the shipped model;
- :mod:`.train`: fine-tunes the tones model on a known member set
  (``recipes/worlds/checkpoints/tones_members``);
- :mod:`.gmm_world`: a Gaussian-mixture "model" that memorises a known member set (fast tests);
- :mod:`.targets`: the models attacked (tones, diffusers ``StableAudioPipeline``, Gaussian mixture);
- :mod:`.features`: per-sample features (denoising loss at fixed timesteps with fixed noise via
  :func:`interventions.denoising_loss`, CFG contrast, gradient norm via
  :func:`interventions.per_sample_grad_norms`);
- :mod:`.stats` and :mod:`.inference`: AUC with bootstrap intervals, TPR at 1% FPR, dataset
  inference (split, fit, one-sided Welch t-test), p-value against n, the null check;
- :mod:`.sets` and :mod:`.encode`: suspect / held-out folders (``latents.safetensors`` +
  ``prompts.json``), ``.wav`` encoding for Stable Audio Open;
- :mod:`.run`: ``interventions run dataset_inference``; :mod:`.plots`: its figure.
"""
