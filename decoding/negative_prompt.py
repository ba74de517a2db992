"""Classifier-free-guidance-style negative prompting with any same-vocabulary model, batched.

Sanchez et al., "Stay on topic with Classifier-Free Guidance", arXiv:2306.17806, as implemented by
transformers' ``UnbatchedClassifierFreeGuidanceLogitsProcessor``::

    s = γ · (log_softmax(z_cond) - log_softmax(z_neg)) + log_softmax(z_neg)

``z_neg`` comes from a model reading ``negative prompt + generated tokens`` with its own cache.
Unlike the transformers processor this one runs a whole left-padded batch (correct
``position_ids``), accepts a different model for the negative branch, and drops padded logit
rows; in transformers' own setting (batch 1, same model) it produces identical scores.
"""

from __future__ import annotations

import math

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

from .auxiliary import AuxiliaryModel, check_same_vocab, log_probs, widen


def guided_logprobs(cond: torch.Tensor, negative: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """``γ (cond - negative) + negative`` on log-probabilities (γ = 1 returns ``cond``)."""
    return guidance_scale * (cond - negative) + negative


class NegativePromptLogitsProcessor(LogitsProcessor):
    """Push generation away from what a negative prompt would produce.

    Args:
        tokenizer: the main model's tokenizer.
        negative: the model reading the negative prompt (any model sharing the vocabulary).
        guidance_scale: γ; 1 leaves the model unchanged, larger moves further from the negative.

    Example::

        >>> neg = AuxiliaryModel(model, tok, ["<bos>"], "negative")                 # doctest: +SKIP
        >>> model.generate(**enc, logits_processor=[NegativePromptLogitsProcessor(tok, neg, 1.5)])  # doctest: +SKIP
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, negative: AuxiliaryModel, guidance_scale: float) -> None:
        if not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be finite, got {guidance_scale}")
        self.negative = negative
        self.guidance_scale = float(guidance_scale)
        self.vocab_size = check_same_vocab({"main": tokenizer, negative.name: negative.tokenizer})

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        cond = log_probs(scores, self.vocab_size)
        if self.guidance_scale == 1.0:  # no-op: spare the negative model's forward
            return widen(cond, scores.shape[-1])
        return widen(guided_logprobs(cond, self.negative(input_ids), self.guidance_scale), scores.shape[-1])
