"""Ensemble aggregation: ``[k, B]`` member scores -> ``[B]``.

Coste et al., "Reward Model Ensembles Help Mitigate Overoptimization", arXiv:2310.02743, and
Eisenstein et al., "Helping or Herding? Reward Model Ensembles Mitigate but do not Eliminate
Reward Hacking", arXiv:2312.09244::

    mean            (1/k) Σ_i r_i
    min             min_i r_i                      (worst-case optimisation, WCO)
    uwo             mean - λ·Var_i(r_i)            (uncertainty-weighted; Var with ``ddof``, 0 by default)
    median          median_i r_i
    mean_minus_std  mean - k_s·Std_i(r_i)

Coste's best-of-n uses population variance (ddof=0, λ=0.5), its PPO the unbiased one (ddof=1,
λ=0.1); the two differ by k/(k-1), so rescale λ when switching ddof.
"""

from __future__ import annotations

from typing import Literal

import torch

Aggregation = Literal["mean", "min", "uwo", "median", "mean_minus_std"]
AGGREGATIONS: tuple[str, ...] = ("mean", "min", "uwo", "median", "mean_minus_std")


def check_scores(scores: torch.Tensor) -> torch.Tensor:
    """``[k, B]`` finite float scores, or a clear error."""
    if scores.dim() != 2:
        raise ValueError(f"member scores must have shape [members, batch], got {tuple(scores.shape)}")
    bad = ~torch.isfinite(scores)
    if bad.any():
        member, row = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"member {member} gave a non-finite score ({scores[member, row].item()}) for row {row}")
    return scores.double()


def aggregate(
    scores: torch.Tensor,
    method: Aggregation = "mean",
    lam: float = 0.5,
    ddof: int = 0,
    k_s: float = 1.0,
) -> torch.Tensor:
    """Aggregate member scores ``[k, B]`` into ``[B]`` (float64).

    Example:
        >>> s = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
        >>> aggregate(s, "mean").tolist(), aggregate(s, "min").tolist()
        ([2.0, 0.0], [1.0, 0.0])
        >>> aggregate(s, "uwo", lam=0.5).tolist()        # 2 - 0.5 * Var([1, 3]) = 2 - 0.5 * 1
        [1.5, 0.0]
        >>> aggregate(s, "uwo", lam=0.5, ddof=1).tolist()  # unbiased Var([1, 3]) = 2
        [1.0, 0.0]
    """
    scores = check_scores(scores)
    k = scores.shape[0]
    if method == "mean":
        return scores.mean(0)
    if method == "min":
        return scores.min(0).values
    if method == "median":
        return scores.median(0).values if k % 2 else scores.sort(0).values[k // 2 - 1 : k // 2 + 1].mean(0)
    if method in ("uwo", "mean_minus_std"):
        if k - ddof < 1:
            raise ValueError(f"{method} needs more than {ddof} member(s) for a variance with ddof={ddof}; got k={k}")
        if k == 1:
            raise ValueError(f"{method} needs at least 2 members: with one there is no disagreement to penalise")
        var = scores.var(0, correction=ddof)
        return scores.mean(0) - (lam * var if method == "uwo" else k_s * var.sqrt())
    raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}; got {method!r}")


def spread(scores: torch.Tensor, ddof: int = 0) -> torch.Tensor:
    """Per-row standard deviation across members (0 for a single member)."""
    scores = check_scores(scores)
    return scores.std(0, correction=ddof) if scores.shape[0] > ddof else torch.zeros(scores.shape[1], dtype=torch.float64)
