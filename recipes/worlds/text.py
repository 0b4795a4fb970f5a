"""The prompt side shared by the text-conditioned worlds: an offline word-level tokenizer and the
tiny ``CLIPTextModel`` config that reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def word_level_tokenizer(vocab: dict[str, int], max_length: int) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` built offline (no download): ``<bos> $A <eos>``,
    padded with ``<pad>`` to ``max_length`` by the pipeline; unknown words map to ``<unk>``."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>",
        special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


def text_encoder_config(vocab: dict[str, int], max_length: int) -> dict[str, Any]:
    """``CLIPTextConfig`` arguments of the worlds' text encoder (hidden 64, 2 layers, 4 heads)."""
    return dict(
        vocab_size=len(vocab),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=max_length,
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<bos>"],
        eos_token_id=vocab["<eos>"],
        projection_dim=64,
    )


def load_text_encoder(root: Path) -> Any:
    """A world checkpoint's CLIP text encoder (``root/text_encoder``), from safetensors only, its
    config checked against the weights before it is built (:func:`recipes.folders.load_component`)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..folders import load_component

    return load_component(
        CLIPTextModel,
        root / "text_encoder",
        "model.safetensors",
        root,
        lambda config: CLIPTextModel(CLIPTextConfig.from_dict(config)),
    )
