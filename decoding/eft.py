"""Emulated fine-tuning (EFT): up-scaling and down-scaling by logit arithmetic.

Mitchell et al., "An Emulator for Fine-Tuning Large Language Models using Small Language Models",
arXiv:2310.12962. A fine-tuned model is its base reweighted by the implicit reward
``log π_tune - log π_ref``; adding a *small* model's reward to a *large* base emulates fine-tuning
the large model (up-scaling), and the reverse down-scales::

    log p̃_t(v) = log π_base(v) + Σ_i w_i [log π_tune_i(v) - log π_ref(v)] - log Z_t

Each model reads its own prompt (base and reference the pretraining format, tuned models the chat
template) and the same generated tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

from .auxiliary import AuxiliaryModel, check_same_vocab, log_probs, widen


def top_p_mask(logprobs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The smallest set of highest-probability tokens whose mass reaches ``top_p`` (always >= 1 token)."""
    sorted_lp, order = logprobs.sort(dim=-1, descending=True)
    mass_before = sorted_lp.exp().cumsum(-1) - sorted_lp.exp()
    keep_sorted = mass_before < top_p
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def eft_logprobs(
    base: torch.Tensor,
    tuned: Sequence[torch.Tensor],
    reference: torch.Tensor,
    weights: Sequence[float],
    reweight_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The EFT distribution ``log_softmax(base + Σ w_i (tuned_i - reference))`` over ``[B, V]`` log-probs.

    ``reweight_mask`` (bool ``[B, V]``) limits the reweighting to some tokens (``upscale_top_p``);
    outside it tokens keep the base log-probability before renormalisation.
    """
    delta = sum(w * (t - reference) for w, t in zip(weights, tuned))
    if reweight_mask is not None:
        delta = torch.where(reweight_mask, delta, torch.zeros_like(delta))
    return torch.log_softmax(base + delta, dim=-1)


def check_weights(weights: Sequence[float], n: int, what: str = "weights") -> list[float]:
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"{what}: got {len(weights)} values for {n} models")
    bad = [w for w in weights if not math.isfinite(w)]
    if bad:
        raise ValueError(f"{what} must be finite, got {weights}")
    return weights


class EFTLogitsProcessor(LogitsProcessor):
    """Emulated fine-tuning as a logits processor on the *base* model's ``generate``.

    Args:
        tokenizer: the main (base) model's tokenizer; every auxiliary must share its vocabulary.
        tuned: fine-tuned models, each with its own prompt (e.g. the chat template).
        reference: the tuned models' common pre-fine-tuning model, with its own prompt; ``None``
            when the reference *is* the main model on the same prompt (its scores are reused).
        weights: ``w_i`` per tuned model (default all 1). Helpful/harmless interpolation:
            ``[λ, 1 - λ]``.
        upscale_top_p: reweight only inside the first tuned model's top-p set.

    Example (up-scaling: large base + small instruct delta)::

        >>> proc = EFTLogitsProcessor(
        ...     tok,
        ...     tuned=[AuxiliaryModel(small_instruct, tok, [[{"role": "user", "content": "37+485="}]], "small-instruct")],
        ...     reference=AuxiliaryModel(small_base, tok, ["37+485="], "small-base"),
        ... )                                                                          # doctest: +SKIP
        >>> large_base.generate(**tok(["37+485="], return_tensors="pt"), logits_processor=[proc],
        ...                     do_sample=False, max_new_tokens=8)                     # doctest: +SKIP
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        tuned: Sequence[AuxiliaryModel],
        reference: AuxiliaryModel | None,
        weights: Sequence[float] | None = None,
        upscale_top_p: float | None = None,
    ) -> None:
        if not tuned:
            raise ValueError("EFT needs at least one tuned model")
        self.tuned = list(tuned)
        self.reference = reference
        self.weights = check_weights([1.0] * len(tuned) if weights is None else weights, len(tuned))
        if upscale_top_p is not None and not 0.0 < upscale_top_p <= 1.0:
            raise ValueError(f"upscale_top_p must be in (0, 1], got {upscale_top_p}")
        self.upscale_top_p = upscale_top_p
        models = {"main": tokenizer, **{a.name: a.tokenizer for a in self.tuned}}
        if reference is not None:
            models[reference.name] = reference.tokenizer
        self.vocab_size = check_same_vocab(models)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        base = log_probs(scores, self.vocab_size)
        tuned = [aux(input_ids) for aux in self.tuned]
        reference = base if self.reference is None else self.reference(input_ids)
        mask = None if self.upscale_top_p is None else top_p_mask(tuned[0], self.upscale_top_p)
        return widen(eft_logprobs(base, tuned, reference, self.weights, mask), scores.shape[-1])
