"""The models the benchmarks run, built from configs (nothing is downloaded).

The tiny StableDiffusionPipeline is the test suite's (``tests/tiny_models.py``: real diffusers and
transformers classes, word-level tokenizer), so a benchmark and a test exercise the same model;
GPT-2 is the real 124M ``GPT2Config()`` shape with random weights.
"""

from __future__ import annotations

import torch

from tests.tiny_models import sd_pipeline

__all__ = ["sd_pipeline", "gpt2_small"]


def gpt2_small(seed: int = 0):
    """GPT2LMHeadModel(GPT2Config()): the 124M GPT-2 small shape, random weights, eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(GPT2Config())
    return model.eval().requires_grad_(False)
