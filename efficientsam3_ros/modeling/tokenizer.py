"""Offline CLIP BPE tokenization for concept phrases.

open_clip ships the BPE vocabulary (``bpe_simple_vocab_16e6.txt.gz``) inside its wheel, so
phrases are tokenized without any download. SAM3 uses a context of 32 tokens.
"""

from __future__ import annotations

import torch
from open_clip.tokenizer import SimpleTokenizer

MAX_PHRASE_CHARS = 200


class ConceptTokenizer:
    """Turns noun phrases into ``input_ids``/``attention_mask`` of a fixed context length."""

    def __init__(self, context_length: int = 32):
        self.context_length = context_length
        self._bpe = SimpleTokenizer(context_length=context_length)

    def __call__(self, phrases: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        cleaned = [validate_phrase(p) for p in phrases]
        if not cleaned:
            raise ValueError("no concept phrases given: pass at least one, e.g. 'red mug'")
        input_ids = self._bpe(cleaned, context_length=self.context_length).long()
        attention_mask = (input_ids != 0).long()
        return input_ids, attention_mask


def validate_phrase(phrase: str) -> str:
    """Normalise a concept phrase, refusing what cannot be a concept."""
    if not isinstance(phrase, str):
        raise ValueError(f"a concept must be a string, got {type(phrase).__name__}")
    cleaned = " ".join(phrase.split())
    if not cleaned:
        raise ValueError("empty concept phrase: give a noun phrase such as 'red mug'")
    if len(cleaned) > MAX_PHRASE_CHARS:
        raise ValueError(f"concept phrase is {len(cleaned)} characters; the limit is {MAX_PHRASE_CHARS}")
    return cleaned
