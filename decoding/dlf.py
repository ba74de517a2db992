"""Dynamic Logits Fusion (DLF): EFT/proxy-tuning with a per-step weight chosen by KL matching.

Dynamic Logits Fusion, arXiv:2406.15480
(METHODS §D2). With P = the large model, Q = the small base, Q_t = small experts and
``P̃_α = softmax(log P + Σ_t α_t (log Q_t - log Q))``, each step picks α so the large model's shift
matches the small expert's shift in both KL directions::

    single: argmin_α (KL(P̃_α‖P) - KL(Q_1‖Q))² + (KL(P‖P̃_α) - KL(Q‖Q_1))²
    multi : argmin_α Σ_t [(KL(P̃_α‖P) - KL(Q_t‖Q))² + (KL(P‖P̃_α) - KL(Q‖Q_t))²]

α is searched on a 21-point grid over [0, 2]; with several experts one is active per step: every
(expert, α) pair with the others at 0 is scored under the multi-task objective and the first
minimum wins. The search is one vectorised ``[n_experts, grid, B, V]`` computation.
"""

from __future__ import annotations

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
        grid: candidate α values ``[G]``.
    """
    q_t = torch.stack(list(experts))  # [n, B, V]
    target_fwd = kl(q_t, small.expand_as(q_t))  # KL(Q_t‖Q)  [n, B]
    target_rev = kl(small.expand_as(q_t), q_t)  # KL(Q‖Q_t)  [n, B]
    shift = q_t - small  # [n, B, V]
    fused = torch.log_softmax(large + grid[None, :, None, None] * shift[:, None], dim=-1)  # [n, G, B, V]
    a = kl(fused, large.expand_as(fused))  # KL(P̃‖P)  [n, G, B]
    b = kl(large.expand_as(fused), fused)  # KL(P‖P̃)
    objective = ((a[..., None] - target_fwd.T[None, None]) ** 2 + (b[..., None] - target_rev.T[None, None]) ** 2).sum(-1)
    n, g, batch = objective.shape
    best = objective.permute(2, 0, 1).reshape(batch, n * g).argmin(-1)  # first minimum: expert-major, α ascending
    expert, alpha_index = best // g, best % g
    rows = torch.arange(batch)
    return fused[expert, alpha_index, rows], expert, grid[alpha_index]


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
