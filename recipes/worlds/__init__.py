"""Synthetic worlds with known ground truth, tiny model builders and shipped checkpoints."""
