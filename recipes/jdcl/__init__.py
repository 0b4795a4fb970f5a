"""JDCL (arXiv 2411.08224): continual learning with joint diffusion models; a local model per
task, then a global model trained on generated replay with diffusion and classifier knowledge
distillation. Run it with ``interventions run jdcl``; results in ``recipes/results/README.md``."""
