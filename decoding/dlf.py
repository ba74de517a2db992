"""Dynamic Logits Fusion (DLF): EFT/proxy-tuning with a per-step weight chosen by KL matching.

Dynamic Logits Fusion, arXiv:2406.15480
(METHODS §D2). With P = the large model, Q = the small base, Q_t = small experts and
``P̃_α = softmax(log P + Σ_t α_t (log Q_t - log Q))``, each step picks α so the large model's shift
matches the small expert's shift in both KL directions::

    single: argmin_α (KL(P̃_α‖P) - KL(Q_1‖Q))² + (KL(P‖P̃_α) - KL(Q‖Q_1))²
    multi : argmin_α Σ_t [(KL(P̃_α‖P) - KL(Q_t‖Q))² + (KL(P‖P̃_α) - KL(Q‖Q_t))²]

α is searched on a 21-point grid over [0, 2]; with several experts one is active per step: every
(expert, α) pair with the others at 0 is scored under the multi-task objective and the first
minimum wins.

The search never materialises the ``[n_experts, grid, B, V]`` fused distributions. With
``l = log P`` and ``s = log Q_t - log Q``, ``log P̃_α = l + α s - log Z_α``, so both KLs are scalars
of two expectations::

    KL(P̃_α‖P) = α E_P̃α[s] - log Z_α        KL(P‖P̃_α) = log Z_α - α E_P[s]

and walking the sorted grid, ``P̃_α' ∝ P̃_α · exp((α' - α) s)``: one multiply and two reductions
per candidate over ``[n_experts, B, V]``, no ``exp``/``log`` per candidate (the factor is shared
by every step of a uniform grid), and memory a few ``[n_experts, B, V]`` buffers whatever the grid.
At a 152k vocabulary this is what keeps DLF's cost and memory close to EFT's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

from .auxiliary import AuxiliaryModel, check_same_vocab, log_probs, widen

DEFAULT_GRID = tuple(round(0.1 * i, 1) for i in range(21))


def kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) over the last axis from log-probabilities (0·log 0 = 0)."""
    p = p_log.exp()
    return (p * (p_log - q_log)).where(p > 0, torch.zeros_like(p)).sum(-1)


def dlf_select(
    large: torch.Tensor, small: torch.Tensor, experts: Sequence[torch.Tensor], grid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Choose one (expert, α) per row and return ``(fused log-probs [B,V], expert [B], alpha [B])``.

    Args:
        large: ``log P`` ``[B, V]``; small: ``log Q``; experts: ``log Q_t`` each ``[B, V]``.
        grid: candidate α values ``[G]``; ties go to the first (expert-major, grid order).
    """
    q_t = torch.stack(list(experts))  # [n, B, V]
    target_fwd = kl(q_t, small.expand_as(q_t))  # KL(Q_t‖Q)  [n, B]
    target_rev = kl(small.expand_as(q_t), q_t)  # KL(Q‖Q_t)  [n, B]
    shift = q_t - small  # s  [n, B, V]
    p = large.exp()
    mean_p = (p * shift).sum(-1)  # E_P[s]  [n, B]
    alphas = [float(a) for a in grid]
    objective = torch.empty(len(alphas), *shift.shape[:2], device=large.device)  # [G, n, B]
    order = sorted(range(len(alphas)), key=alphas.__getitem__)
    # start from the smallest α directly; log Z is relative to Σ exp(l), so an α of 0 gives
    # exactly 0 (an expert equal to the small base ties every α, and the first one wins)
    z = large + alphas[order[0]] * shift
    log_z = torch.logsumexp(z, -1) - torch.logsumexp(large, -1)
    tilted = torch.softmax(z, -1)  # P̃_α  [n, B, V]
    step, factor = None, None
    for position, index in enumerate(order):
        alpha = alphas[index]
        if position:
            delta = alpha - alphas[order[position - 1]]
            if step is None or not math.isclose(delta, step, rel_tol=1e-9, abs_tol=1e-12):
                step, factor = delta, torch.exp(delta * shift)
            total = tilted.sum(-1)
            tilted.mul_(factor)
            new_total = tilted.sum(-1)
            log_z = log_z + torch.log(new_total / total)
            tilted.div_(new_total[..., None])
        mean_tilted = (tilted * shift).sum(-1)  # E_P̃α[s]
        fwd = alpha * mean_tilted - log_z  # KL(P̃_α‖P)  [n, B]
        rev = log_z - alpha * mean_p  # KL(P‖P̃_α)
        objective[index] = (
            (fwd[:, None] - target_fwd[None]) ** 2 + (rev[:, None] - target_rev[None]) ** 2
        ).sum(1)  # [n candidates, B], summed over the n targets
    g, n, batch = objective.shape
    best = objective.permute(2, 1, 0).reshape(batch, n * g).argmin(-1)  # first minimum: expert-major, grid order
    expert, alpha_index = best // g, best % g
    rows = torch.arange(batch, device=large.device)
    alpha = grid.to(large.device)[alpha_index]
    fused = torch.log_softmax(large + alpha[:, None] * shift[expert, rows], dim=-1)
    return fused, expert, alpha


class DLFLogitsProcessor(LogitsProcessor):
    """Dynamic Logits Fusion on the *large* model's ``generate``.

    Args:
        tokenizer: the large (main) model's tokenizer.
        small_base: the small base model ``Q`` with its own prompt.
        experts: small fine-tuned experts ``Q_t`` with their own prompts (one: single-task).
        grid: α candidates (default 0, 0.1, ..., 2.0).

    After generation ``choices`` holds, per step, the chosen expert index and α for every row.

    Example::

        >>> proc = DLFLogitsProcessor(tok, small_base=AuxiliaryModel(small_base, tok, ["37+485="]),
        ...     experts=[AuxiliaryModel(expert_add, tok, chat(["37+485="]), "add"),
        ...              AuxiliaryModel(expert_sub, tok, chat(["37+485="]), "sub")])   # doctest: +SKIP
        >>> large_base.generate(**tok(["37+485="], return_tensors="pt"), logits_processor=[proc])  # doctest: +SKIP
        >>> proc.choices[0]  # step 0: {"expert": tensor([0]), "alpha": tensor([1.2])}         # doctest: +SKIP
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        small_base: AuxiliaryModel,
        experts: Sequence[AuxiliaryModel],
        grid: Sequence[float] = DEFAULT_GRID,
    ) -> None:
        if not experts:
            raise ValueError("DLF needs at least one expert")
        self.small_base = small_base
        self.experts = list(experts)
        self.grid = torch.tensor([float(g) for g in grid])
        if not torch.isfinite(self.grid).all() or len(self.grid) == 0:
            raise ValueError(f"grid must be non-empty and finite, got {list(grid)}")
        self.vocab_size = check_same_vocab(
            {"main": tokenizer, small_base.name: small_base.tokenizer, **{e.name: e.tokenizer for e in self.experts}}
        )
        self.choices: list[dict[str, torch.Tensor]] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        large = log_probs(scores, self.vocab_size)
        fused, expert, alpha = dlf_select(
            large, self.small_base(input_ids), [e(input_ids) for e in self.experts], self.grid.to(large.device)
        )
        self.choices.append({"expert": expert.cpu(), "alpha": alpha.cpu()})
        return widen(fused, scores.shape[-1])
