"""Speculative up-scaling: EFT sampled exactly, with the small fine-tuned model as the drafter.

Mitchell et al., arXiv:2310.12962 §speculative decoding; acceptance rule of
Leviathan et al., "Fast Inference from Transformers via Speculative Decoding", arXiv:2211.17192.
The draft ``q`` is the small tuned model, the target the EFT distribution
``p = softmax(log π_base + w (log q - log π_ref))``. Per round the drafter proposes ``k`` tokens;
large base and small reference score them in one forward each; ``x_i`` is accepted with
probability ``min(1, p(x_i)/q(x_i))``, the first rejection is replaced by a sample of
``norm(max(0, p - q))``, and if all pass a bonus token comes from ``p``. The output is distributed
exactly as EFT's; greedy decoding reproduces greedy EFT token for token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .auxiliary import AuxiliaryModel, check_same_vocab


@dataclass
class SpeculativeOutput:
    sequences: torch.LongTensor  # [B, prompt + new]; rows that ended early are padded after EOS
    drafted: int  # tokens proposed (summed over rows)
    accepted: int  # drafted tokens that passed the test (summed over rows)
    rounds: int
    bonus_rounds: int = 0  # row-rounds that accepted every draft: a bonus token from p
    residual_draws: int = 0  # row-rounds whose token came from norm(max(0, p - q)) after a rejection
    partial_rounds: int = 0  # row-rounds that accepted some drafts, then rejected one

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(1, self.drafted)


def _pick(logprobs: torch.Tensor, do_sample: bool, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of ``[B, V]`` log-probs: sampled, or the argmax (on ``logprobs``' device;
    a generator on another device draws there and the result moves back)."""
    if do_sample:
        probs = logprobs.exp()
        if generator is not None and generator.device != probs.device:
            return torch.multinomial(probs.to(generator.device), 1, generator=generator)[:, 0].to(probs.device)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]
    return logprobs.argmax(-1)


def _uniform(shape: torch.Size, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """U(0, 1) draws on ``like``'s device, from ``generator`` wherever it lives."""
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device).to(like.device)


def _compact(generated: torch.Tensor, visible: torch.Tensor, limit: int, stops: torch.Tensor | None, pad: int) -> torch.Tensor:
    """Each row's visible tokens, first ``limit``, left-aligned and right-padded to the longest row;
    a row that ended in EOS counts up to it (the padding every row has after its EOS is dropped)."""
    rows = list(generated[:, :limit]) if visible.all() else [row[shown][:limit] for row, shown in zip(generated, visible)]
    lengths = []
    for row in rows:
        at = torch.isin(row, stops).nonzero() if stops is not None else row[:0]
        lengths.append(int(at[0, 0]) + 1 if len(at) else len(row))
    out = generated.new_full((len(rows), max(lengths, default=0)), pad)
    for i, row in enumerate(rows):
        out[i, : min(len(row), out.shape[1])] = row[: out.shape[1]]
    return out


def eos_tensor(eos_token_id: int | Sequence[int] | None, device: torch.device) -> torch.Tensor | None:
    """The ids that end a generation (one or several, e.g. ``generation_config.eos_token_id``) as a tensor."""
    if eos_token_id is None:
        return None
    return torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=device)


@torch.no_grad()
def speculative_eft_generate(
    base: AuxiliaryModel,
    tuned: AuxiliaryModel,
    reference: AuxiliaryModel,
    input_ids: torch.LongTensor,
    weight: float = 1.0,
    k: int = 3,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
    k_schedule: str = "heuristic",
) -> SpeculativeOutput:
    """Generate from the EFT distribution with ``tuned`` drafting ``k`` tokens per round.

    ``input_ids`` are the base model's prompts (left padded; new tokens are appended). Each model
    reads its own prompts through its :class:`AuxiliaryModel`. ``k=3`` was fastest on the testbed
    (speed-up over plain EFT for k = 2..6: 1.60, 1.80, 1.67, 1.42, 1.21; acceptance ~0.7).

    **Batches.** Every row runs the acceptance test on its own drafts and keeps what it accepted:
    the caches keep the longest accepted run of the round and hide, per row, the drafts after its
    first rejection (:meth:`AuxiliaryModel.hide`; positions come from the attention mask, so the
    next token sits where it would without the hole). Rows advance independently and stay
    rectangular; the output is compacted per row. Finished rows do not hold the others back.

    **Draft length.** ``k_schedule="heuristic"`` (default) adapts ``k`` between rounds with
    transformers' assisted-generation rule (``num_assistant_tokens_schedule``): ``k + 2`` after a
    round in which (at least half of the live rows) accepted every draft, else ``max(1, k - 1)``;
    ``"constant"`` keeps ``k``. ``k`` depends only on past rounds, so the output stays exact.

    Example::

        >>> out = speculative_eft_generate(AuxiliaryModel(large_base, tok, ["37+485="], "base"),
        ...     AuxiliaryModel(small_instruct, tok, chat, "tuned"), AuxiliaryModel(small_base, tok, ["37+485="], "ref"),
        ...     tok(["37+485="], return_tensors="pt")["input_ids"], k=3, max_new_tokens=8)   # doctest: +SKIP
    """
    if k < 1 or not math.isfinite(weight):
        raise ValueError(f"need k >= 1 and a finite weight (got k={k}, weight={weight})")
    if k_schedule not in ("constant", "heuristic"):
        raise ValueError(f"k_schedule must be 'constant' or 'heuristic' (got {k_schedule!r})")
    check_same_vocab({"base": base.tokenizer, "tuned": tuned.tokenizer, "reference": reference.tokenizer})  # drafts of one are scored by all
    pad = pad_token_id if pad_token_id is not None else base.pad_token_id
    for aux in (base, tuned, reference):
        aux.bind(input_ids)
    batch, start = input_ids.shape
    ids = input_ids
    stops = eos_tensor(eos_token_id, input_ids.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    visible = torch.ones(batch, 0, dtype=torch.bool, device=input_ids.device)  # generated columns that are tokens, not hidden drafts
    counts = torch.zeros(batch, dtype=torch.long, device=input_ids.device)  # tokens generated per row
    drafted = accepted = rounds = bonus_rounds = residual_draws = partial_rounds = 0
    q_next = tuned(ids)  # [B, V]: the drafter's distribution for the next token
    while not finished.all():
        rounds += 1
        live = ~finished
        some_done = bool(finished.any())
        budget = min(k, max_new_tokens - int((counts[live] if some_done else counts).min()))
        drafts, qs = [], [q_next]
        for j in range(budget):
            drafts.append(_pick(qs[-1], do_sample, generator))
            if j < budget - 1:  # the last draft is read later, only if some row accepts every draft
                qs.append(tuned(torch.cat([ids, torch.stack(drafts, 1)], dim=1)))
        draft = torch.stack(drafts, 1)  # [B, budget]
        proposal = torch.cat([ids, draft], dim=1)
        # one forward each scores every drafted position (+1 for the bonus token)
        base_lp = base(proposal, keep=budget + 1)  # [B, budget + 1, V]
        ref_lp = reference(proposal, keep=budget + 1)
        q = torch.stack(qs, 1)  # [B, budget, V]
        p = torch.log_softmax(base_lp[:, :budget] + weight * (q - ref_lp[:, :budget]), dim=-1)
        if do_sample:
            ratio = (p.gather(-1, draft[..., None]) - q.gather(-1, draft[..., None]))[..., 0].exp()
            ok = _uniform(draft.shape, ratio, generator) < ratio.clamp(max=1.0)
        else:
            ok = p.argmax(-1) == draft
        n_ok = ok.long().cumprod(1).sum(1)  # leading accepted drafts per row
        n_live = n_ok[live] if some_done else n_ok
        drafted += budget * len(n_live)
        accepted += int(n_live.sum())
        partial_rounds += int(((n_live > 0) & (n_live < budget)).sum())
        # every row keeps its own accepted drafts: the caches keep the longest run (`width`
        # columns) and hide, per row, the drafts after its first rejection
        width = int(n_live.max())
        base.rollback(budget - width)
        reference.rollback(budget - width)
        tuned.rollback(max(0, budget - 1 - width))
        full = (n_ok == budget) & live  # rows that accepted everything: a bonus token from p after the drafts
        at = n_ok.clamp(max=budget - 1)[:, None, None].expand(-1, 1, p.shape[-1])
        p_k, q_k = p.gather(1, at)[:, 0], q.gather(1, at)[:, 0]  # each row's distributions at its first rejection
        if do_sample:
            residual = (p_k.exp() - q_k.exp()).clamp(min=0)
            residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p_k.exp())  # p == q: take p
            last = _pick((residual / residual.sum(-1, keepdim=True)).log(), True, generator)
        else:
            last = p_k.argmax(-1)
        if width == budget:
            q_last = tuned(proposal)
            bonus = _pick(torch.log_softmax(base_lp[:, budget] + weight * (q_last - ref_lp[:, budget]), dim=-1), do_sample, generator)
            last = torch.where(full, bonus, last)
        n_full = int(full.sum())
        bonus_rounds += n_full
        residual_draws += len(n_live) - n_full
        kept = torch.where(live, n_ok, width) if some_done else n_ok  # a finished row only pads: nothing to hide
        shown = torch.ones(batch, width + 1, dtype=torch.bool, device=ids.device)
        if int(kept.min()) < width:
            for aux in (base, reference, tuned):
                aux.hide(kept, width)
            shown[:, :width] = torch.arange(width, device=ids.device)[None] < kept[:, None].to(ids.device)
        new = torch.cat([draft[:, :width], last[:, None]], dim=1).to(ids.device)
        if stops is not None:  # after a row's EOS it only pads
            is_eos = torch.isin(new, stops) & shown
            seen = is_eos.long().cumsum(1) - is_eos.long()
            new = torch.where(finished[:, None] | (seen > 0), torch.full_like(new, pad), new)
            finished |= is_eos.any(1)
        ids, visible = torch.cat([ids, new], dim=1), torch.cat([visible, shown], dim=1)
        counts += shown.sum(1)
        finished |= counts >= max_new_tokens
        if not finished.all():
            q_next = tuned(ids)
        if k_schedule == "heuristic":  # transformers' assisted-generation rule, by the rows' majority
            k = k + 2 if 2 * n_full >= len(n_live) else max(1, k - 1)
    ids = torch.cat([input_ids, _compact(ids[:, start:], visible, max_new_tokens, stops, pad)], dim=1)
    return SpeculativeOutput(ids, drafted, accepted, rounds, bonus_rounds, residual_draws, partial_rounds)
