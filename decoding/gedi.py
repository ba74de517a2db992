"""GeDi: a small class-conditional LM guides a large LM through Bayes' rule, token by token.

Krause et al., "GeDi: Generative Discriminator Guided Sequence Generation", arXiv:2009.06367
. The guide reads the text after a control code ``c`` (desired ``d`` or anti-control
``ā``); for every candidate token ``v``::

    L_c   = Σ_{j<t} log P_θ(x_j | x_<j, c)                  (prompt text + generated tokens)
    ℓ_c(v) = a · (L_c + log P_θ(v | x_<t, c)) / t + b_c        (t counts tokens including v)
    log P(d | v) = ℓ_d - logsumexp(ℓ_d, ℓ_ā)
    score(v) = log_softmax(LM)(v) + ω · log P(d | v)

then keeps ``V_m ∪ V_p``: ``V_m`` the fewest highest-posterior tokens whose ``softmax(score)``
mass reaches ``ρ = 1 - filter_p``, ``V_p = {v : P(d|v) >= τ}``. Both classes run as one
``2 x batch`` auxiliary forward with its own cache; ``L_c`` grows by the previous step's token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, PreTrainedModel, PreTrainedTokenizerBase

from .auxiliary import AuxiliaryModel, check_same_vocab, log_probs, widen
from .auxiliary import syncs_are_free as _syncs_are_free


def gedi_posterior(
    lp_desired: torch.Tensor,
    lp_anti: torch.Tensor,
    sum_desired: torch.Tensor,
    sum_anti: torch.Tensor,
    length: torch.Tensor,
    scale: float = 1.0,
    biases: tuple[float, float] = (0.0, 0.0),
) -> torch.Tensor:
    """``log P(d | v)`` ``[B, V]`` from each class's next-token log-probs and running sums ``L_c`` ``[B]``.

    ``ℓ_d - logsumexp(ℓ_d, ℓ_ā) = log σ(ℓ_d - ℓ_ā)``, and ``ℓ_d - ℓ_ā`` is one multiply-add per token
    of ``lp_desired - lp_anti``: three passes over ``[B, V]`` instead of two ``ℓ`` and a ``logaddexp``.
    """
    per_token = (scale / length)[:, None]
    per_row = scale * (sum_desired - sum_anti)[:, None] / length[:, None] + (biases[0] - biases[1])
    x = torch.addcmul(per_row, lp_desired - lp_anti, per_token)
    # log σ(x) as log(sigmoid), branch-free (a data-dependent torch.where is slow on CPU): a third
    # of logsigmoid's time there. σ(x) stays a normal float down to x = -80; below it
    # log σ(x) = x to within e^-80, so log σ(max(x, -80)) + min(x + 80, 0) is exact to fp32 rounding.
    return torch.sigmoid(x.clamp(min=-80.0)).log_().add_((x + 80.0).clamp_(max=0.0))


def _descending_keys(values: torch.Tensor) -> torch.Tensor:
    """int32 keys that sort ascending as ``values`` (fp32) sort descending (IEEE bits made
    order-preserving as signed integers, then reversed)."""
    bits = values.float().contiguous().view(torch.int32)
    return ~(bits ^ ((bits >> 31) & 0x7FFFFFFF))


def _histogram(index: torch.Tensor, weights: torch.Tensor, size: int, sync_free: bool) -> torch.Tensor:
    """``weights`` summed into ``size`` bins by ``index``: ``bincount`` on CPU (the fastest there);
    on accelerators a fixed-size ``scatter_add_``, since CUDA's ``bincount`` reads the input's maximum
    back to the host to size its output (a sync every step)."""
    if sync_free:
        return torch.bincount(index, weights, minlength=size)
    return weights.new_zeros(size).scatter_add_(0, index, weights)


def _crossing(hist: torch.Tensor, before: torch.Tensor, rho: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the first bin at which ``before`` plus the cumulative mass reaches ``rho`` (the last
    bin if none does), and the mass before that bin added to ``before``."""
    cumulative = hist.cumsum(-1)
    totals = cumulative + before[:, None]  # non-decreasing: the first total >= rho by bisection
    rho_t = torch.full_like(before[:, None], rho)
    bin_ = torch.searchsorted(totals, rho_t).clamp_(max=hist.shape[-1] - 1)
    return bin_[:, 0], before + (cumulative.gather(-1, bin_) - hist.gather(-1, bin_))[:, 0]


def _mass_boundary(keys: torch.Tensor, probs: torch.Tensor, rho: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Radix select: per row the key ``k*`` of the token at which the mass of the tokens in key order
    first reaches ``rho``, and the mass of the keys before ``k*``.

    Weighted histograms of 2^16 bins over each row's key range instead of a sort of the vocabulary:
    the first over the ranges' top 16 bits, a second over the rest only where the widest range
    spans more than 2^16 keys (a near-uniform posterior, all values within a few thousand ulps,
    needs one level).
    """
    batch, bins = keys.shape[0], 1 << 16
    low = keys.amin(-1, keepdim=True).long()
    span = (keys.amax(-1, keepdim=True).long() - low).amax()  # the widest row's, up to 2^32 - 1
    shift = (torch.frexp(span.double())[1] - 16).clamp(min=0)  # bits left for a second level
    sync_free = _syncs_are_free(probs.device)
    if sync_free:
        shift = int(shift)  # a scalar shift is a vectorised one on CPU
    rows = torch.arange(batch, device=keys.device)[:, None]
    # (key - low) >> shift, plus the row's offset into one flat histogram, in one subtraction
    digit = (keys - (low - (rows << 16 << shift))) >> shift
    hist = _histogram(digit.flatten(), probs.flatten(), batch * bins, sync_free).view(batch, bins)
    first, before = _crossing(hist, probs.new_zeros(batch), rho)
    boundary = first[:, None] << shift
    flat_bin = first[:, None] + rows * bins  # that bin in the flat histogram; the second level counts its tokens
    if sync_free:  # gather them: often a few dozen
        if shift:
            row, col = (digit == flat_bin).nonzero(as_tuple=True)
            rest = (keys[row, col] - low[row, 0]) & ((1 << shift) - 1)
            hist = torch.bincount(row * (1 << shift) + rest, probs[row, col], minlength=batch << shift)
            second, before = _crossing(hist.view(batch, 1 << shift), before, rho)
            boundary = boundary | second[:, None]
    else:  # fixed shapes, no sync: every token, weighted by whether it is inside (shift 0: a no-op)
        rest = ((keys - low) & ((1 << shift) - 1)) + rows * bins
        hist = _histogram(rest.flatten(), (probs * (digit == flat_bin)).flatten(), batch * bins, sync_free)
        second, before = _crossing(hist.view(batch, bins), before, rho)
        boundary = boundary | second[:, None]
    return (boundary[:, 0] + low[:, 0]).int(), before


def gedi_filter(
    score: torch.Tensor, log_posterior: torch.Tensor, filter_p: float, target_p: float, candidates: int = 256
) -> torch.Tensor:
    """Keep ``V_m ∪ V_p`` of ``score`` (others ``-inf``); see the module docstring.

    ``V_m`` follows the posterior order (ties: lower id first). Sorting a 152k vocabulary per step
    costs more than the guide's forward, so rows first look among their ``candidates``
    highest-posterior tokens; the rows those cannot decide (their mass stays below ρ, as with a
    flat distribution, or a tie group crosses the candidate boundary) find the boundary by radix
    select over the posterior's bits, with ties at the boundary taken in id order.
    """
    probs = torch.softmax(score, dim=-1)
    rho = 1.0 - filter_p
    k = min(candidates, score.shape[-1])
    sync_free = _syncs_are_free(probs.device)
    if sync_free and bool((probs.amax(-1) * k < rho).all()):  # k tokens cannot hold ρ: flat rows
        v_m, decided = None, torch.zeros(probs.shape[0], 1, dtype=torch.bool)
    else:
        top_values, top_ids = log_posterior.topk(k, dim=-1)  # unordered ties: restore (value desc, id asc)
        ids, by_id = top_ids.sort(dim=-1)
        values = top_values.gather(-1, by_id)
        values, by_value = values.sort(dim=-1, descending=True, stable=True)
        order = ids.gather(-1, by_value)
        mass = probs.gather(-1, order)
        keep_sorted = (mass.cumsum(-1) - mass) < rho  # fewest tokens reaching ρ
        n_keep = keep_sorted.sum(-1, keepdim=True)
        last_kept = values.gather(-1, (n_keep - 1).clamp(min=0))
        decided = ~keep_sorted[:, -1:] & (last_kept > values[:, -1:])  # ρ reached inside, no tie crossing k
        v_m = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, keep_sorted)
    # every row through the radix select (no row gathers), decided rows keep theirs; on a GPU
    # always, so no step waits on a device-to-host sync to ask whether it is needed
    if not sync_free or not bool(decided.all()):
        keys = _descending_keys(log_posterior)
        boundary, before = _mass_boundary(keys, probs, rho)
        ties = keys == boundary[:, None]
        if sync_free and bool((ties.sum(-1) == 1).all()):  # boundary unique: it is kept
            radix = keys <= boundary[:, None]
        else:
            tie_before = before[:, None] + (probs * ties).cumsum(-1) - probs  # ties in id order
            radix = (keys < boundary[:, None]) | (ties & (tie_before < rho))
        v_m = radix if v_m is None else torch.where(decided, v_m, radix)
    v_p = log_posterior >= (math.log(target_p) if target_p > 0 else -math.inf)  # P(d|v) >= τ
    return score.masked_fill(~(v_m | v_p), float("-inf"))


class GeDiLogitsProcessor(LogitsProcessor):
    """GeDi guidance of ``generate`` by a class-conditional LM sharing the vocabulary.

    Args:
        tokenizer: the guided (main) model's tokenizer.
        gedi_model: the class-conditional LM (trained on ``code + text``).
        gedi_tokenizer: its tokenizer (same vocabulary).
        prompts: the prompt texts as the guide should read them after the code, one per row.
        desired_code, anti_code: the control-code strings prefixed to the text.
        omega: ω, the posterior weight (30 in the reference code).
        filter_p: ρ = 1 - filter_p is the ``V_m`` mass (0.8 in the reference code).
        target_p: τ of ``V_p`` (0.8 in the reference code).
        scale: ``a`` (learned in the reference; 1 here unless you trained one).
        biases: ``(b_d, b_anti)``.

    Example::

        >>> proc = GeDiLogitsProcessor(tok, gedi, tok, prompts=["37-"], desired_code="n:", anti_code="p:")  # doctest: +SKIP
        >>> large_base.generate(**tok(["37-"], return_tensors="pt"), logits_processor=[proc])   # doctest: +SKIP
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        gedi_model: PreTrainedModel,
        gedi_tokenizer: PreTrainedTokenizerBase,
        prompts: Sequence[str],
        desired_code: str,
        anti_code: str,
        omega: float = 30.0,
        filter_p: float = 0.8,
        target_p: float = 0.8,
        scale: float = 1.0,
        biases: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        for name, value in (("omega", omega), ("scale", scale), *zip(("b_d", "b_anti"), biases)):
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        for name, value in (("filter_p", filter_p), ("target_p", target_p)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if desired_code == anti_code:
            raise ValueError("desired_code and anti_code must differ")
        self.vocab_size = check_same_vocab({"main": tokenizer, "gedi": gedi_tokenizer})
        self.omega, self.filter_p, self.target_p = float(omega), float(filter_p), float(target_p)
        self.scale, self.biases = float(scale), (float(biases[0]), float(biases[1]))
        # code and text are tokenized apart and joined as ids, so a BPE merge across the boundary
        # can never move it: exactly the text's tokens are scored
        codes = [gedi_tokenizer(code)["input_ids"] for code in (desired_code, anti_code)]
        texts = [gedi_tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        ids = [code + text for code in codes for text in texts]
        starts = [len(code) for code in codes for _ in prompts]
        self.guide = AuxiliaryModel(gedi_model, gedi_tokenizer, ids, "gedi", score_prompt_from=starts)
        self.text_lengths = torch.tensor(
            [len(ids) - s for ids, s in zip(self.guide.prompt_ids, starts)][: len(prompts)], dtype=torch.float
        )
        self._sums: torch.Tensor | None = None  # [2, B]: L_d, L_anti
        self._previous: torch.Tensor | None = None  # [2, B, V] last step's class log-probs
        self._steps = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        batch = input_ids.shape[0]
        lp = self.guide(torch.cat([input_ids, input_ids])).view(2, batch, -1)
        if self._sums is None:
            self._sums = self.guide.prompt_logprob.view(2, batch).float()
        else:  # the token generated at the previous step joins both running sums
            last = input_ids[:, -1].to(lp.device)
            self._sums = self._sums + self._previous.gather(-1, last.expand(2, batch)[..., None])[..., 0]
            self._steps += 1
        self._previous = lp
        length = self.text_lengths.to(lp.device) + self._steps + 1
        log_post = gedi_posterior(lp[0], lp[1], self._sums[0], self._sums[1], length, self.scale, self.biases)
        score = log_probs(scores, self.vocab_size) + self.omega * log_post
        return widen(gedi_filter(score, log_post, self.filter_p, self.target_p), scores.shape[-1])
