"""The log-sigmoid-centred (LSC) transform and its per-prompt reference rewards.

Wang et al., "Transforming and Combining Rewards for Aligning Large Language Models",
arXiv:2402.00742::

    u = log σ(r(x, y) - r_ref(x)) <= 0,   r_ref(x) = quantile_q {r(x, y_j) : y_j ~ π_0, j = 1..m}
    u_total = Σ_p u_p                      (one reference per property: log P(good on all))

Already-good outputs get diminishing returns, which curbs reward hacking.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F


def lsc(rewards: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``log σ(r - r_ref)`` elementwise.

    Example:
        >>> lsc(torch.tensor([0.0, 10.0]), torch.tensor([0.0, 0.0])).tolist()   # log ½, ≈ 0
        [-0.6931471824645996, -4.5398901420412585e-05]
    """
    return F.logsigmoid(rewards - reference)


def combine(transformed: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Σ over properties of LSC-transformed rewards (a logical AND of "good on property p")."""
    if not transformed:
        raise ValueError("combine needs at least one property")
    shapes = {name: tuple(t.shape) for name, t in transformed.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"properties disagree on shape: {shapes}")
    return torch.stack(list(transformed.values())).sum(0)


class ReferenceRewards:
    """Per-prompt reference reward ``r_ref(x)``: the ``q``-quantile (or the mean, ``q=None``) of the
    reward of ``m`` reference-policy samples, computed once per prompt and cached.

    Args:
        reward: ``(prompts, completions) -> [B]`` scores (an ensemble, one member, a function).
        sample: ``(prompts, m) -> completions`` as a list of ``m`` completions per prompt.
        m: samples per prompt (8 by default); q: the quantile (0.85 by default, [unverified]).
    """

    def __init__(
        self,
        reward: Callable[[Sequence[Any], Sequence[Any]], torch.Tensor],
        sample: Callable[[Sequence[Any], int], list[list[Any]]],
        m: int = 8,
        q: float | None = 0.85,
    ) -> None:
        if m < 1 or (q is not None and not 0.0 <= q <= 1.0):
            raise ValueError(f"need m >= 1 and q in [0, 1] (or None for the mean); got m={m}, q={q}")
        self.reward, self.sample, self.m, self.q = reward, sample, m, q
        self.cache: dict[str, float] = {}

    @staticmethod
    def key(prompt: Any) -> str:
        return prompt if isinstance(prompt, str) else repr(prompt)

    def __call__(self, prompts: Sequence[Any]) -> torch.Tensor:
        todo = list({self.key(p): p for p in prompts if self.key(p) not in self.cache}.values())
        if todo:
            samples = self.sample(todo, self.m)
            flat_prompts = [p for p, s in zip(todo, samples) for _ in s]
            scores = self.reward(flat_prompts, [c for s in samples for c in s]).double().view(len(todo), self.m)
            ref = scores.mean(1) if self.q is None else torch.quantile(scores, self.q, dim=1)
            self.cache.update({self.key(p): float(r) for p, r in zip(todo, ref)})
        return torch.tensor([self.cache[self.key(p)] for p in prompts], dtype=torch.float64)
