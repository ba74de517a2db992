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
``l = log P`` and ``s = log Q_t - log Q``, ``log P̃_α = l + α s - log Z_α``, so every KL is a scalar
of an expectation::

    KL(P̃_α‖P) = α E_P̃α[s] - log Z_α      KL(P‖P̃_α) = log Z_α - α E_P[s]
    KL(Q_t‖Q) = E_Qt[s]                   KL(Q‖Q_t) = -E_Q[s]

and walking the sorted grid, ``P̃_α' ∝ P̃_α · exp((α' - α)(s - max s))``: one multiply and two
reductions per candidate, no ``exp``/``log`` per candidate (a uniform grid shares one factor),
done over vocabulary blocks small enough to stay in cache on CPU. Memory stays a few
``[n_experts, B, V]`` buffers whatever the grid; at a 152k vocabulary this is what keeps DLF's
per-step cost near EFT's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

from .auxiliary import AuxiliaryModel, check_same_vocab, log_probs, widen

DEFAULT_GRID = tuple(round(0.1 * i, 1) for i in range(21))


def dlf_select(
    large: torch.Tensor,
    small: torch.Tensor,
    experts: Sequence[torch.Tensor],
    grid: torch.Tensor,
    block: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Choose one (expert, α) per row and return ``(fused log-probs [B,V], expert [B], alpha [B])``.

    Args:
        large: ``log P`` ``[B, V]``; small: ``log Q``; experts: ``log Q_t`` each ``[B, V]``.
        grid: candidate α values ``[G]``; ties go to the first (expert-major, grid order).
        block: vocabulary ids per pass of the grid walk (default: whole rows on GPU, about 256 KiB
            of each buffer on CPU so the walk stays in cache). Only speed depends on it.
    """
    q_t = torch.stack(list(experts))  # [n, B, V]
    n, batch, vocab = q_t.shape
    rows, device, dot = n * batch, large.device, torch.linalg.vecdot
    # s; a -inf log-prob (a masked token) becomes a large finite shift, so 0 x s stays 0
    shift = torch.nan_to_num_(q_t - small, nan=0.0, posinf=1e4, neginf=-1e4)
    target_fwd = dot(q_t.exp(), shift)  # KL(Q_t‖Q)  [n, B]
    target_rev = -dot(small.exp(), shift)  # KL(Q‖Q_t)
    p = large.exp()
    mean_p = dot(p, shift)  # E_P[s]
    alphas = grid.tolist()  # the processor keeps its grid on the CPU: no device sync per step
    order = sorted(range(len(alphas)), key=alphas.__getitem__)
    first, g = alphas[order[0]], len(alphas)
    if first == 0.0:  # log Z_0 is exactly 0: an expert equal to the small base ties every α
        log_z0 = torch.zeros(n, batch, device=device)
        tilted = p.expand(n, batch, vocab).clone()
    else:
        z = large + first * shift
        log_z0 = torch.logsumexp(z, -1) - torch.logsumexp(large, -1)
        tilted = torch.softmax(z, -1)
    top = shift.amax(-1)  # max s per row: every factor exp(Δ(s - max s)) <= 1, nothing overflows
    tilted, flat, top_col = tilted.view(rows, vocab), shift.view(rows, vocab), top.view(rows, 1)
    sums = torch.zeros(g, rows, device=device)  # Σ_v P̃_α (unnormalised), per candidate in sorted order
    dots = torch.zeros(g, rows, device=device)  # Σ_v P̃_α s
    deltas = [alphas[order[i]] - alphas[order[i - 1]] for i in range(1, g)]
    if block is None:
        block = vocab if device.type != "cpu" else max(1024, 65536 // rows)
    for start in range(0, vocab, block):
        w, s = tilted[:, start : start + block], flat[:, start : start + block]
        step = factor = None
        for position in range(g):
            if position:
                delta = deltas[position - 1]
                if step is None or not math.isclose(delta, step, rel_tol=1e-9, abs_tol=1e-12):
                    step, factor = delta, torch.exp(torch.sub(s, top_col).mul_(delta))
                w.mul_(factor)
            sums[position] += w.sum(-1)
            dots[position] += dot(w, s)
    alpha_sorted = torch.tensor([alphas[i] for i in order], device=device)[:, None, None]  # [G, 1, 1]
    sums, dots = sums.view(g, n, batch), dots.view(g, n, batch)
    log_z = log_z0 + (alpha_sorted - first) * top + torch.log(sums / sums[:1])
    fwd = alpha_sorted * dots / sums - log_z  # KL(P̃_α‖P)  [G, n, B]
    rev = log_z - alpha_sorted * mean_p  # KL(P‖P̃_α)
    by_sorted = ((fwd[:, :, None] - target_fwd) ** 2 + (rev[:, :, None] - target_rev) ** 2).sum(2)  # Σ over targets
    objective = torch.empty_like(by_sorted)
    objective[torch.tensor(order, device=device)] = by_sorted  # back to grid order  [G, n, B]
    best = objective.permute(2, 1, 0).reshape(batch, n * g).argmin(-1)  # first minimum: expert-major, grid order
    expert, alpha_index = best // g, best % g
    alpha = grid.to(device)[alpha_index]
    fused = torch.log_softmax(large + alpha[:, None] * shift[expert, torch.arange(batch, device=device)], dim=-1)
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
            large, self.small_base(input_ids), [e(input_ids) for e in self.experts], self.grid
        )
        self.choices.append({"expert": expert.cpu(), "alpha": alpha.cpu()})
        return widen(fused, scores.shape[-1])
