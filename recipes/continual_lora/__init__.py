"""Continual LoRA personalization (arXiv 2410.04891; code luk-st/continual-lora) on the shapes world."""
