"""Best-of-n: rerank samples by a reward, and the unbiased best-of-n estimator for curves.

Coste et al., arXiv:2310.02743. From N samples sorted ascending by proxy score, with
``g_(i)`` the gold score at position i (1-based), best-of-n's expected gold score is::

    E[gold | BoN-n] = Σ_{i=n}^{N} C(i-1, n-1) / C(N, n) · g_(i),      KL_BoN(n) = log n - (n-1)/n

(the chance that the best of a random n-subset sits at position i). Binomials in log space
(lgamma); proxy ties are broken by a seeded random order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

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


class Sample(NamedTuple):
    """One drawn completion (text, or chat messages) and whether it ended with an EOS id rather
    than running into the token limit."""

    completion: Any
    finished: bool


class Pick(NamedTuple):
    """Best-of-n's choice for one prompt."""

    completion: Any
    score: float
    finished: bool


def best_of_n(
    prompts: Sequence[Any],
    sample: Callable[[Sequence[Any], int], list[list[Any]]],
    reward: Callable[[Sequence[Any], Sequence[Any]], torch.Tensor],
    n: int,
    prefer_finished: bool = True,
) -> list[Pick]:
    """For each prompt draw ``n`` completions with ``sample(prompts, n)`` and keep the one with the
    highest ``reward`` (an ensemble with any aggregation, or any scorer).

    ``sample`` returns, per prompt, :class:`Sample` s (as :func:`hf_sampler` and
    :func:`vllm_sampler` do) or bare completions (counted as finished). With ``prefer_finished``
    a truncated completion is picked only when none of its prompt's ``n`` finished: a reward model
    has no way to see that an answer was cut off.

    Example:
        >>> draw = lambda prompts, n: [[Sample(p + "!" * k, finished=k < 2) for k in range(n)] for p in prompts]
        >>> best_of_n(["hi"], draw, lambda p, c: torch.tensor([float(len(x)) for x in c]), n=3)
        [Pick(completion='hi!', score=3.0, finished=True)]
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    samples = [[s if isinstance(s, Sample) else Sample(s, True) for s in row] for row in sample(prompts, n)]
    if len(samples) != len(prompts) or any(len(s) != n for s in samples):
        raise ValueError(f"sample() must return {n} completions for each of the {len(prompts)} prompts")
    scores = reward([p for p, s in zip(prompts, samples) for _ in s], [c.completion for s in samples for c in s])
    scores = scores.double().view(len(prompts), n)
    finished = torch.tensor([[c.finished for c in s] for s in samples]).view(len(prompts), n)
    rank = scores.clone()
    if prefer_finished:  # rows where something finished rank only their finished samples
        rank[finished.any(1, keepdim=True) & ~finished] = -math.inf
    best = rank.argmax(1)
    return [Pick(s[int(b)].completion, float(scores[i, b]), s[int(b)].finished) for i, (s, b) in enumerate(zip(samples, best))]


def hf_sampler(
    model: Any, tokenizer: Any, batch_size: int = 64, **generate_kwargs: Any
) -> Callable[[Sequence[Any], int], list[list[Sample]]]:
    """``sample(prompts, n)`` through ``model.generate`` (T=1 sampling unless overridden): per prompt,
    ``n`` :class:`Sample` s; chat prompts get chat-message completions, text prompts text."""
    from decoding.generate import generate_with

    kwargs = {"do_sample": True, "temperature": 1.0, "max_new_tokens": 64, **generate_kwargs}

    def sample(prompts: Sequence[Any], n: int) -> list[list[Sample]]:
        repeated = [p for p in prompts for _ in range(n)]
        drawn = generate_with(model, tokenizer, repeated, batch_size=batch_size, **kwargs)
        return [[Sample(_like(p, t), done) for t, done in drawn[i * n : (i + 1) * n]] for i, p in enumerate(prompts)]

    return sample


def _like(prompt: Any, text: str) -> Any:
    """A completion in the prompt's format: text, or one assistant message."""
    return text if isinstance(prompt, str) else [{"role": "assistant", "content": text}]


def vllm_sampler(llm: Any, **sampling_kwargs: Any) -> Callable[[Sequence[str], int], list[list[Sample]]]:
    """``sample(prompts, n)`` through a vLLM engine (text prompts; ``SamplingParams(n=n, ...)``);
    finished = vLLM's ``finish_reason == "stop"`` (an EOS or stop string, not the length limit)."""
    from vllm import SamplingParams

    def sample(prompts: Sequence[str], n: int) -> list[list[Sample]]:
        params = SamplingParams(n=n, **{"temperature": 1.0, "max_tokens": 64, **sampling_kwargs})
        outs = llm.generate(list(prompts), params, use_tqdm=False)
        return [[Sample(o.text, o.finish_reason == "stop") for o in out.outputs] for out in outs]

    return sample
