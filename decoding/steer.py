"""STEER: contrastive expert guidance with negative prompting, for diverse in-domain synthetic data.

O'Neill et al., "Steering Language Generation: Harnessing Contrastive Expert Guidance and Negative
Prompting for Coherent and Diverse Synthetic Data Generation", arXiv:2308.07645::

    s_t(v) = (1+γ) log p_ft(v | c, x<t) - γ log p_base(v | c, x<t) - η log p_ft(v | c_neg, x<t)

then keep the top-k (10) and renormalise. The fine-tuned model runs ``generate`` on context ``c``;
the base model reads ``c`` and the fine-tuned model reads the negative context ``c_neg``, each
with its own cache. ``c_neg`` is drawn from a :class:`NegativePool` of real examples that grows
with every output, pushing each new sample away from earlier ones.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

from .auxiliary import AuxiliaryModel, check_same_vocab, log_probs, widen


def steer_logprobs(
    expert: torch.Tensor,
    base: torch.Tensor | None,
    negative: torch.Tensor | None,
    gamma: float,
    eta: float,
    top_k: int | None,
) -> torch.Tensor:
    """STEER scores from ``[B, V]`` log-probs, truncated to ``top_k`` and renormalised."""
    s = expert.clone()
    if gamma:
        s = s + gamma * (expert - base)
    if eta:
        s = s - eta * negative
    if top_k is not None and top_k < s.shape[-1]:
        kth = s.topk(top_k, dim=-1).values[..., -1:]
        s = s.masked_fill(s < kth, float("-inf"))
    return torch.log_softmax(s, dim=-1)


class NegativePool:
    """Examples to steer away from: ``k`` random ones, space-joined, form a negative context.

    Example:
        >>> pool = NegativePool(["12+3=15", "7-2=5"], k=2, seed=0)
        >>> pool.add(["40+2=42"]); len(pool)
        3
        >>> len(pool.sample().split(" "))
        2
    """

    def __init__(self, examples: Iterable[str], k: int = 10, seed: int = 0, separator: str = " ") -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.examples = [e for e in examples if e]
        self.k, self.separator = k, separator
        self._rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.examples)

    def add(self, outputs: Iterable[str]) -> None:
        self.examples.extend(o for o in outputs if o)

    def sample(self, seed: int | None = None) -> str:
        """``k`` examples without replacement, from the pool's own generator or, with ``seed``, one
        seeded for this draw alone (a row's negatives then depend on its seed, not on draw order)."""
        if not self.examples:
            raise ValueError("the negative pool is empty: give it real examples before generating")
        rng = self._rng if seed is None else random.Random(seed)
        return self.separator.join(rng.sample(self.examples, min(self.k, len(self.examples))))


class SteerLogitsProcessor(LogitsProcessor):
    """STEER on the fine-tuned model's ``generate``.

    Args:
        tokenizer: the fine-tuned (main) model's tokenizer.
        base: the base model reading the same context ``c`` (needed when ``gamma != 0``).
        negative: the fine-tuned model reading ``c_neg`` (needed when ``eta != 0``); build its
            prompts with :meth:`NegativePool.sample`.
        gamma, eta: contrast and negative-prompt strengths (defaults 0.2, 0.6 from the reference
            code); ``gamma = eta = 0`` and ``top_k=None`` reproduce the fine-tuned model.
        top_k: keep the k best tokens before renormalising (default 10).

    Example::

        >>> pool = NegativePool(train_texts, k=10)                                    # doctest: +SKIP
        >>> proc = SteerLogitsProcessor(tok, base=AuxiliaryModel(base, tok, prompts, "base"),
        ...     negative=AuxiliaryModel(expert, tok, [pool.sample() for _ in prompts], "negative"))  # doctest: +SKIP
        >>> out = expert.generate(**enc, logits_processor=[proc], do_sample=True)     # doctest: +SKIP
        >>> pool.add(tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))  # doctest: +SKIP
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        base: AuxiliaryModel | None,
        negative: AuxiliaryModel | None,
        gamma: float = 0.2,
        eta: float = 0.6,
        top_k: int | None = 10,
    ) -> None:
        if not (math.isfinite(gamma) and math.isfinite(eta)):
            raise ValueError(f"gamma and eta must be finite, got gamma={gamma}, eta={eta}")
        if gamma and base is None:
            raise ValueError("gamma != 0 needs the base model (base=AuxiliaryModel(...))")
        if eta and negative is None:
            raise ValueError("eta != 0 needs the negative-context model (negative=AuxiliaryModel(...))")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        self.base, self.negative = base, negative
        self.gamma, self.eta, self.top_k = float(gamma), float(eta), top_k
        models = {"main": tokenizer}
        for aux in (base, negative):
            if aux is not None:
                models[aux.name] = aux.tokenizer
        self.vocab_size = check_same_vocab(models)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        expert = log_probs(scores, self.vocab_size)
        base = self.base(input_ids) if self.gamma else None
        negative = self.negative(input_ids) if self.eta else None
        return widen(steer_logprobs(expert, base, negative, self.gamma, self.eta, self.top_k), scores.shape[-1])
