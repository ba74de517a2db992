"""Best-of-n: rerank samples by a reward, and the unbiased best-of-n estimator for curves.

Coste et al., arXiv:2310.02743 (METHODS §R3). From N samples sorted ascending by proxy score, with
``g_(i)`` the gold score at position i (1-based), best-of-n's expected gold score is::

    E[gold | BoN-n] = Σ_{i=n}^{N} C(i-1, n-1) / C(N, n) · g_(i),      KL_BoN(n) = log n - (n-1)/n

(the chance that the best of a random n-subset sits at position i). Binomials in log space
(lgamma); proxy ties are broken by a seeded random order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch


def kl_best_of_n(n: int) -> float:
    """The KL of best-of-n from its base policy, ``log n - (n-1)/n``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_weights(big_n: int, n: int) -> torch.Tensor:
    """``w_i = C(i-1, n-1) / C(N, n)`` for i = 1..N (they sum to 1)."""
    if not 1 <= n <= big_n:
        raise ValueError(f"need 1 <= n <= N, got n={n}, N={big_n}")
    i = torch.arange(n, big_n + 1, dtype=torch.float64)
    log_binom_n = math.lgamma(big_n + 1) - math.lgamma(n + 1) - math.lgamma(big_n - n + 1)
    # log C(i-1, n-1) for i >= n (smaller i cannot hold the best of n)
    logw = torch.lgamma(i) - math.lgamma(n) - torch.lgamma(i - n + 1) - log_binom_n
    return torch.cat([torch.zeros(n - 1, dtype=torch.float64), logw.exp()])


def unbiased_best_of_n(proxy: torch.Tensor, gold: torch.Tensor, n: int, seed: int = 0) -> float:
    """Expected ``gold`` of the proxy-best of n draws without replacement from N samples of one
    prompt (``proxy``, ``gold``: ``[N]``). Average over prompts for a curve.

    Example:
        >>> round(unbiased_best_of_n(torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0.0, 1.0, 2.0]), n=2), 12)  # (1 + 2 + 2) / 3
        1.666666666667
    """
    if proxy.shape != gold.shape or proxy.dim() != 1:
        raise ValueError(f"proxy and gold must be [N] of the same length, got {tuple(proxy.shape)}, {tuple(gold.shape)}")
    g = torch.Generator().manual_seed(seed)
    shuffle = torch.randperm(len(proxy), generator=g)  # stable sort after a seeded shuffle breaks ties fairly
    order = shuffle[torch.sort(proxy[shuffle].double(), stable=True).indices]
    return float((best_of_n_weights(len(proxy), n) * gold[order].double()).sum())


def best_of_n(
    prompts: Sequence[Any],
    sample: Callable[[Sequence[Any], int], list[list[Any]]],
    reward: Callable[[Sequence[Any], Sequence[Any]], torch.Tensor],
    n: int,
) -> list[tuple[Any, float]]:
    """For each prompt draw ``n`` completions with ``sample(prompts, n)`` and keep the one with the
    highest ``reward`` (an ensemble with any aggregation, or any scorer); returns (completion, score).

    Example::

        >>> best_of_n(prompts, hf_sampler(model, tok), ensemble, n=16)   # doctest: +SKIP
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    samples = sample(prompts, n)
    if len(samples) != len(prompts) or any(len(s) != n for s in samples):
        raise ValueError(f"sample() must return {n} completions for each of the {len(prompts)} prompts")
    scores = reward([p for p, s in zip(prompts, samples) for _ in s], [c for s in samples for c in s])
    scores = scores.double().view(len(prompts), n)
    best = scores.argmax(1)
    return [(s[int(b)], float(scores[i, b])) for i, (s, b) in enumerate(zip(samples, best))]


def hf_sampler(model: Any, tokenizer: Any, batch_size: int = 64, **generate_kwargs: Any) -> Callable[[Sequence[Any], int], list[list[str]]]:
    """``sample(prompts, n)`` through ``model.generate`` (T=1 sampling unless overridden); chat
    prompts get chat-message completions, text prompts text."""
    from decoding.generate import generate_with

    kwargs = {"do_sample": True, "temperature": 1.0, "max_new_tokens": 64, **generate_kwargs}

    def sample(prompts: Sequence[Any], n: int) -> list[list[Any]]:
        repeated = [p for p in prompts for _ in range(n)]
        texts = [t for t, _ in generate_with(model, tokenizer, repeated, batch_size=batch_size, **kwargs)]
        return [[_like(p, t) for t in texts[i * n : (i + 1) * n]] for i, p in enumerate(prompts)]

    return sample


def _like(prompt: Any, text: str) -> Any:
    """A completion in the prompt's format: text, or one assistant message."""
    return text if isinstance(prompt, str) else [{"role": "assistant", "content": text}]


def vllm_sampler(llm: Any, **sampling_kwargs: Any) -> Callable[[Sequence[str], int], list[list[str]]]:
    """``sample(prompts, n)`` through a vLLM engine (text prompts; ``SamplingParams(n=n, ...)``)."""
    from vllm import SamplingParams

    def sample(prompts: Sequence[str], n: int) -> list[list[str]]:
        params = SamplingParams(n=n, **{"temperature": 1.0, "max_tokens": 64, **sampling_kwargs})
        return [[o.text for o in out.outputs] for out in llm.generate(list(prompts), params, use_tqdm=False)]

    return sample
