"""Dynamic Logits Fusion (DLF): EFT/proxy-tuning with a per-step weight chosen by KL matching.

Dynamic Logits Fusion, arXiv:2406.15480
. With P = the large model, Q = the small base, Q_t = small experts and
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

and every candidate needs two sums over the vocabulary, ``Σ P̃_α₀ e^{(α-α₀)s}`` and the same
weighted by ``s`` (``α₀`` the smallest α; ``s`` centred at its row maximum, which changes no KL and
keeps every factor <= 1). On the default grid ``α - α₀ = 0.1 k``, and with ``r = e^{0.1 s}`` and ``k = 7a + j``, ``r^k = r^{7a} r^j``: all 21 pairs of sums are one small
matmul per vocabulary block between ``[w r^{7a}, w s r^{7a}]`` (a < 3) and ``r^j`` (j < 7), thirteen
multiplies per token and one ``exp`` instead of 21 tilts and 42 reductions. Blocks are small enough
to stay in cache on CPU; memory stays a few ``[n_experts, B, V]`` buffers whatever the grid, which
at a 152k vocabulary is what keeps DLF's per-step cost near EFT's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

from .auxiliary import AuxiliaryModel, check_same_vocab, log_probs, syncs_are_free, widen

DEFAULT_GRID = tuple(round(0.1 * i, 1) for i in range(21))


def dlf_select(
    large: torch.Tensor,
    small: torch.Tensor,
    experts: Sequence[torch.Tensor],
    grid: torch.Tensor,
    block: int | None = None,
    search: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Choose one (expert, α) per row and return ``(fused log-probs [B,V], expert [B], alpha [B])``.

    Args:
        large: ``log P`` ``[B, V]``; small: ``log Q``; experts: ``log Q_t`` each ``[B, V]``.
        grid: candidate α values ``[G]``; ties go to the first (expert-major, grid order).
        block: vocabulary ids per pass of the moment sums (default: about 128k row-ids on CPU, so a
            block stays in cache; 1M on GPU). Only speed depends on it.
        search: ``dense`` (every candidate's ``log Z_α`` and tilted mean over ``[G, n, B, V]``;
            cheapest when that is small, e.g. the testbed's 96 ids), ``moments`` (the blocked
            moment sums above, for real vocabularies) or ``auto`` (dense up to ``DENSE_LIMIT``
            elements). Both give the same choice; only speed differs.
    """
    if search not in ("auto", "dense", "moments"):
        raise ValueError(f"search must be auto, dense or moments, got {search!r}")
    experts = list(experts)
    (batch, vocab), n = small.shape, len(experts)
    device, dot = large.device, torch.linalg.vecdot
    shift = small.new_empty(n, batch, vocab)  # s = log Q_t - log Q  [n, B, V]
    for q, s in zip(experts, shift):
        torch.sub(q, small, out=s)
    torch.nan_to_num_(shift, nan=0.0, posinf=1e4, neginf=-1e4)  # a masked token's ±inf: 0 x s stays 0
    target_fwd = torch.stack([dot(q.exp(), s) for q, s in zip(experts, shift)])  # KL(Q_t‖Q)  [n, B]
    target_rev = -dot(small.exp(), shift)  # KL(Q‖Q_t)
    # From here s is centred at its row maximum: P̃_α and every KL are unchanged by a constant shift,
    # every factor e^{o s} is <= 1 (nothing overflows), and when the mass sits on the maximum
    # the KLs come out near 0 without α·max s cancelling against log Z (which decided near-ties).
    shift.sub_(shift.amax(-1, keepdim=True))
    p = large.exp()
    mean_p = dot(p, shift)  # E_P[s]
    alphas = grid.tolist()  # the processor keeps its grid on the CPU: no device sync per step
    order = sorted(range(len(alphas)), key=alphas.__getitem__)
    first, g = alphas[order[0]], len(alphas)
    alpha_sorted = torch.tensor([alphas[i] for i in order], device=device)[:, None, None]  # [G, 1, 1]
    if search == "dense" or (search == "auto" and g * n * batch * vocab <= DENSE_LIMIT):
        # log P is normalised, so log Z_α = logsumexp(l + α s); exact in log space, nothing is lost
        z = large + alpha_sorted[..., None] * shift  # [G, n, B, V]
        log_z = torch.logsumexp(z, -1)
        fwd = alpha_sorted * dot(torch.softmax(z, -1), shift) - log_z  # KL(P̃_α‖P)  [G, n, B]
        rev = log_z - alpha_sorted * mean_p  # KL(P‖P̃_α)
        lost = torch.zeros_like(fwd, dtype=torch.bool)
    else:
        if first == 0.0:  # log Z_0 is exactly 0: an expert equal to the small base ties every α
            log_z0 = torch.zeros(n, batch, device=device)
            tilted = p.expand(n, batch, vocab)
        else:
            z = large + first * shift
            log_z0 = torch.logsumexp(z, -1) - torch.logsumexp(large, -1)
            tilted = torch.softmax(z, -1)
        sums, dots = _tilted_moments(tilted, shift, [alphas[i] - first for i in order], block)
        sums, dots = sums.T.reshape(g, n, batch), dots.T.reshape(g, n, batch)
        log_z = log_z0 + torch.log(sums / sums[:1])
        fwd = alpha_sorted * dots / sums - log_z  # KL(P̃_α‖P)  [G, n, B]
        rev = log_z - alpha_sorted * mean_p  # KL(P‖P̃_α)
        # The shared centring cannot hold every candidate in fp32's range when the tilt moves the mass
        # onto tokens far from max s (e.g. log P of -200 and -80 next to 0: the dominant token's e^{o s}
        # underflows): a sum of 0 gives a NaN objective, which argmin would pick.
        # On CPU those rows' KLs are recomputed exactly in log space (rare); on accelerators, where
        # asking whether there are any would stall every step on a sync, their candidates are dropped.
        lost = ~((sums > _MIN_SUM) & torch.isfinite(dots))  # [G, n, B]
        if syncs_are_free(device):
            rows = lost.any(0)
            if bool(rows.any()):
                _exact_kls(large, shift, alpha_sorted[:, 0, 0], mean_p, rows, fwd, rev)

    by_sorted = ((fwd[:, :, None] - target_fwd) ** 2 + (rev[:, :, None] - target_rev) ** 2).sum(2)  # Σ over targets
    if not syncs_are_free(device):
        by_sorted = by_sorted.masked_fill(lost, math.inf)
    objective = torch.empty_like(by_sorted)
    objective[torch.tensor(order, device=device)] = by_sorted  # back to grid order  [G, n, B]
    best = objective.permute(2, 1, 0).reshape(batch, n * g).argmin(-1)  # first minimum: expert-major, grid order
    expert, alpha_index = best // g, best % g
    alpha = grid.to(device)[alpha_index]
    chosen = shift[expert, torch.arange(batch, device=device)]
    fused = torch.log_softmax(torch.addcmul(large, chosen, alpha[:, None]), -1)
    return fused, expert, alpha


_MIN_SUM = 1e-30  # well inside fp32's normal range (1.2e-38): smaller sums have lost their precision
# the dense search's [G, n, B, V] temporaries up to this many elements (16 MiB in fp32): below it one
# logsumexp over them beats the blocked moment sums' per-block passes (the testbed's 96 ids: batch 1
# to 64); a real vocabulary is far above it at any batch
DENSE_LIMIT = 1 << 22


def _exact_kls(
    large: torch.Tensor, shift: torch.Tensor, alphas: torch.Tensor, mean_p: torch.Tensor, rows: torch.Tensor,
    fwd: torch.Tensor, rev: torch.Tensor,
) -> None:
    """KL(P̃_α‖P) and KL(P‖P̃_α) for every α of the (expert, row) pairs in ``rows`` ``[n, B]``,
    written into ``fwd``/``rev`` ``[G, n, B]``: ``log Z_α`` by logsumexp and ``E_P̃α[s]`` from the
    log-space fused distribution, as the dense search computes them."""
    for e, b in rows.nonzero().tolist():
        z = large[b] + alphas[:, None] * shift[e, b]  # [G, V]; log P is normalised, so log Z_α = logsumexp z
        log_z = torch.logsumexp(z, -1)
        tilted_mean = (torch.softmax(z, -1) * shift[e, b]).sum(-1)
        fwd[:, e, b] = alphas * tilted_mean - log_z
        rev[:, e, b] = log_z - alphas * mean_p[e, b]


def _lattice(offsets: Sequence[float], max_power: int = 64) -> tuple[float, list[int]] | None:
    """``(step, k)`` with ``offsets[i] == k[i] * step`` when the sorted offsets lie on such a lattice."""
    gaps = [b - a for a, b in zip(offsets, offsets[1:]) if b - a > 1e-12]
    if not gaps:
        return 1.0, [0] * len(offsets)
    for divisor in range(1, 11):  # e.g. offsets 0, 0.3, 0.5: smallest gap 0.2, step 0.1
        step = min(gaps) / divisor
        ks = [round(o / step) for o in offsets]
        if ks[-1] <= max_power and all(abs(k * step - o) <= 1e-6 * max(1.0, o) for k, o in zip(ks, offsets)):
            return step, ks
    return None


def _tilted_moments(
    w: torch.Tensor, s: torch.Tensor, offsets: Sequence[float], block: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ_v w e^{o s}`` and ``Σ_v w s e^{o s}`` for every offset ``o >= 0``: ``[rows, G]`` each.

    ``s`` is ``[n, B, V]`` (rows = n·B), centred so its row maximum is 0 (no factor exceeds 1), ``w``
    the same shape or an expanded view of one ``[B, V]`` (it is copied block by block anyway).

    Both are contractions ``high @ lowᵀ`` over the vocabulary, done as one batched matmul per block.
    On a lattice ``o = k·step`` with ``r = e^{step s}`` and ``k = m·a + j``, ``r^k = r^{ma} r^j``:
    ``high`` holds ``w r^{ma}`` and ``w s r^{ma}``, ``low`` holds ``r^j``, so K + 1 candidates cost about
    ``2√(2(K+1))`` multiplies per token instead of K + 1 tilts (the rest is matmul). Any other grid
    takes one ``exp`` per candidate (``low = e^{o s}``, ``high = [w, w s]``).
    """
    n, batch, vocab = s.shape
    rows = n * batch
    s = s.view(rows, vocab)
    lattice = _lattice(offsets)
    if lattice is None:
        ks, n_low, n_high = list(range(len(offsets))), len(offsets), 1
        offset_t = torch.tensor(offsets, device=s.device, dtype=s.dtype)[None, :, None]
    else:
        step, ks = lattice
        # k = m a + j with j < m, a < n_high: m + 2 n_high elementwise passes, least at m ≈ √(2(K+1))
        n_low = math.ceil(math.sqrt(2 * (ks[-1] + 1)))
        n_high = -(-(ks[-1] + 1) // n_low)
    if block is None:  # on CPU a block's buffers (rows x (n_low + 2 n_high) floats per id) stay in cache
        block = min(16384, max(2048, 131072 // rows)) if s.device.type == "cpu" else max(2048, (1 << 20) // rows)
    acc = s.new_zeros(rows, 2 * n_high, n_low)
    # one set of buffers for every block (the last one uses a prefix); low[:, 0] = r^0 = 1 once
    high_buf, low_buf = s.new_empty(rows, 2 * n_high, block), s.new_empty(rows, n_low, block)
    spare = s.new_empty(rows, block)
    if lattice is not None:
        low_buf[:, 0] = 1.0
    for start in range(0, vocab, block):
        sb = s[:, start : start + block]
        width = sb.shape[1]
        high, low = high_buf[:, :, :width], low_buf[:, :, :width]
        high[:, 0].view(n, batch, width).copy_(w[..., start : start + width])
        if lattice is None:
            torch.exp(offset_t * sb[:, None, :], out=low)
        else:
            r = torch.exp(torch.mul(sb, step, out=spare[:, :width]), out=low[:, 1])  # e^{step s}
            for j in range(2, n_low):
                torch.mul(low[:, j - 1], r, out=low[:, j])
            r_m = torch.mul(low[:, -1], r, out=spare[:, :width])
            for a in range(1, n_high):  # w r^{m a}
                torch.mul(high[:, a - 1], r_m, out=high[:, a])
        torch.mul(high[:, :n_high], sb[:, None], out=high[:, n_high:])
        acc.baddbmm_(high, low.transpose(1, 2))
    moments = acc.view(rows, 2, n_high * n_low)[:, :, ks]
    return moments[:, 0], moments[:, 1]


class DLFLogitsProcessor(LogitsProcessor):
    """Dynamic Logits Fusion on the *large* model's ``generate``.

    Args:
        tokenizer: the large (main) model's tokenizer.
        small_base: the small base model ``Q`` with its own prompt.
        experts: small fine-tuned experts ``Q_t`` with their own prompts (one: single-task).
        grid: α candidates (default 0, 0.1, ..., 2.0).

    After generation ``choices`` holds, per step, the chosen expert index and α for every row (on
    the scores' device; read them after generation, not per step).

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
        self.choices.append({"expert": expert, "alpha": alpha})  # on the scores' device: no sync per step
        return widen(fused, scores.shape[-1])
