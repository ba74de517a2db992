"""Entropy Adaptive Decoding (EAD): decode with a small model, switch to a large one while the
rolling next-token entropy is high.

"Entropy Adaptive Decoding", arXiv:2502.06833 (no reference code exists, the
mechanics follow third-party summaries and are [unverified]). After each emitted token::

    H_t = -Σ_v p(v) log2 p(v)        (bits, raw pre-temperature distribution of the emitting model)
    H̄_t = mean of the last `window` H   (the window mixes both models)
    small → large if H̄_t >= τ;  large → small if H̄_t <= τ;  only after >= min_tokens on the current model

Each model is an :class:`~decoding.auxiliary.AuxiliaryModel` with its own prompt and KV cache; a
model that was idle catches up on the tokens it has not seen in one prefill forward when it is
needed again (``catchup_tokens`` counts them; the paper ignores this cost).

**Batches.** Rows decide independently. Both caches hold every row, so a model that at least one
row needs runs one batched forward over all rows: the rows that do not need it catch up for free
at that step, and no cache is ever split or re-aligned. Rows on different models therefore cost
two forwards per step; the accounting counts tokens by the model that *emitted* them.

Cost: ``C = (n_S c_S + n_L c_L) / (n c_L)`` with per-token costs ``c`` (default: each model's
forward FLOPs per token), so ``1 - C`` is the saving against large-only decoding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteriaList

from .auxiliary import AuxiliaryModel, check_same_vocab

LOG2 = math.log(2.0)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats of ``softmax(logits)`` over the last axis, computed in fp32
    (log-probabilities work too; ``-inf`` entries contribute 0)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)


def flops_per_token(model: torch.nn.Module) -> int:
    """Forward FLOPs per token of a decoder, 2 x (parameters used per token): embedding lookups are free."""
    params = sum(p.numel() for p in model.parameters())
    return 2 * (params - model.get_input_embeddings().weight.numel())


def entropy_bits(logprobs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in bits of ``[B, V]`` log-probabilities."""
    return entropy(logprobs) / LOG2


@dataclass
class EADOutput:
    """Generated ids (prompt included) and the switching accounting, per row and in total."""

    sequences: torch.LongTensor | None = None
    model_per_token: torch.LongTensor | None = None  # [B, new]: 0 small, 1 large, -1 after EOS
    tokens_small: torch.LongTensor | None = None  # [B]
    tokens_large: torch.LongTensor | None = None
    switches: torch.LongTensor | None = None
    catchup_tokens: int = 0  # tokens prefilled into a model beyond the one it had to read
    large_fraction: float = 0.0
    cost_ratio: float = 0.0
    entropies: torch.Tensor | None = None  # [B, new] bits


@torch.no_grad()
def entropy_adaptive_generate(
    small: AuxiliaryModel,
    large: AuxiliaryModel,
    input_ids: torch.LongTensor,
    tau: float,
    window: int = 5,
    min_tokens: int = 10,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    logits_processor: LogitsProcessorList | None = None,
    stopping_criteria: StoppingCriteriaList | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int = 0,
    costs: tuple[float, float] | None = None,
    schedule: Sequence[bool] | torch.Tensor | None = None,
) -> EADOutput:
    """EAD as a plain function over two auxiliary models.

    Args:
        small, large: the two models, each with its own prompts (one per row of ``input_ids``).
        input_ids: the sequences generation extends (the small model's prompts, left padded);
            only their length and the generated tokens appended to them matter to the models.
        tau: the entropy threshold in bits; window, min_tokens: see the module docstring.
        logits_processor: applied to the chosen model's log-probs before picking (e.g. the
            temperature/top-k warpers ``generate`` builds); entropy is taken before it.
        costs: per-token costs ``(c_S, c_L)``; default: forward FLOPs per token.
        schedule: force the model of every step (``True`` = large) for all rows instead of
            switching on entropy, e.g. to time a given large fraction or to ablate the rule;
            one entry per new token.

    Example::

        >>> out = entropy_adaptive_generate(AuxiliaryModel(small, tok, chat, "small"),
        ...     AuxiliaryModel(large, tok, chat, "large"), enc["input_ids"], tau=1.0,
        ...     window=1, min_tokens=0, max_new_tokens=8, eos_token_id=tok.eos_token_id)  # doctest: +SKIP
        >>> out.large_fraction, out.cost_ratio                                              # doctest: +SKIP
    """
    if not (math.isfinite(tau) and window >= 1 and min_tokens >= 0):
        raise ValueError(f"need a finite tau, window >= 1 and min_tokens >= 0 (got {tau}, {window}, {min_tokens})")
    from .speculative_eft import eos_tensor

    check_same_vocab({"small": small.tokenizer, "large": large.tokenizer})  # rows switch models mid-sequence
    batch, device = input_ids.shape[0], input_ids.device
    processors = logits_processor or LogitsProcessorList()
    if schedule is not None:
        schedule = torch.as_tensor(schedule, dtype=torch.bool, device=input_ids.device)
        if schedule.shape != (max_new_tokens,):
            raise ValueError(f"schedule needs one entry per new token ({max_new_tokens}), got shape {tuple(schedule.shape)}")
    for aux in (small, large):
        aux.bind(input_ids)
    stops = eos_tensor(eos_token_id, device)
    # all state lives on the input's device: no per-token host round trips
    on_large = torch.zeros(batch, dtype=torch.bool, device=device)
    if schedule is not None:
        on_large |= schedule[0]
    run_length = torch.zeros(batch, dtype=torch.long, device=device)  # tokens emitted on the current model
    history = torch.full((batch, window), float("nan"), device=device)  # circular window of emitted-token entropies
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)
    chosen_models, entropies = [], []
    switches = torch.zeros(batch, dtype=torch.long, device=device)
    catchup = 0
    for step in range(max_new_tokens):
        logprobs = torch.empty(batch, small.vocab_size, device=device)
        for aux, rows in ((small, ~on_large), (large, on_large)):
            if rows.any():
                before = aux.state()["generated_tokens"]
                lp = aux(input_ids)
                fed = aux.state()["generated_tokens"] - before
                catchup += max(0, fed - 1)
                logprobs[rows] = lp[rows]
        h = entropy_bits(logprobs)
        scores = processors(input_ids, logprobs.clone())
        if do_sample:
            token = torch.multinomial(torch.softmax(scores, dim=-1), 1)[:, 0]
        else:
            token = scores.argmax(-1)
        token = torch.where(unfinished, token, torch.full_like(token, pad_token_id))
        chosen_models.append(torch.where(unfinished, on_large.long(), torch.full_like(token, -1)))
        entropies.append(torch.where(unfinished, h, torch.full_like(h, float("nan"))))
        input_ids = torch.cat([input_ids, token[:, None]], dim=1)
        # decide the model for the next token from the rolling entropy of emitted tokens
        history[:, step % window] = h
        mean = history.nanmean(dim=1)
        run_length += 1
        eligible = run_length >= min_tokens
        switch = eligible & ((~on_large & (mean >= tau)) | (on_large & (mean <= tau)))
        if schedule is not None:
            switch = on_large != schedule[min(step + 1, max_new_tokens - 1)]
        on_large ^= switch
        run_length[switch] = 0
        switches += (switch & unfinished).long()
        if stopping_criteria is not None:
            unfinished &= ~stopping_criteria(input_ids, scores).to(device)
        elif stops is not None:
            unfinished &= ~torch.isin(token, stops)
        if not unfinished.any():
            break
    per_token = torch.stack(chosen_models, dim=1)
    n_small, n_large = (per_token == 0).sum(1), (per_token == 1).sum(1)
    total = int(n_small.sum() + n_large.sum())
    c_s, c_l = costs if costs is not None else (flops_per_token(small.model), flops_per_token(large.model))
    return EADOutput(
        sequences=input_ids,
        model_per_token=per_token,
        tokens_small=n_small,
        tokens_large=n_large,
        switches=switches,
        catchup_tokens=catchup,
        large_fraction=float(n_large.sum()) / max(1, total),
        cost_ratio=(float(n_small.sum()) * c_s + float(n_large.sum()) * c_l) / max(1, total) / c_l,
        entropies=torch.stack(entropies, dim=1),
    )


def ead_generate(
    model: PreTrainedModel,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    synced_gpus: bool = False,
    streamer=None,
    large: AuxiliaryModel | None = None,
    tau: float = 1.0,
    window: int = 5,
    min_tokens: int = 10,
    costs: tuple[float, float] | None = None,
    small_tokenizer: PreTrainedTokenizerBase | None = None,
    **model_kwargs,
) -> EADOutput:
    """``model.generate(..., custom_generate=ead_generate, large=AuxiliaryModel(...), tau=...)``.

    ``model`` is the small model and reads the prompts passed to ``generate``; ``large`` brings
    its own prompts. ``small_tokenizer``: the small model's, checked against the large model's (the
    two must share a vocabulary; without it the small model is assumed to use the large one's).
    Returns an :class:`EADOutput` (``sequences`` plus the accounting).
    """
    if large is None:
        raise ValueError("EAD needs the large model: generate(..., custom_generate=ead_generate, large=AuxiliaryModel(...))")
    mask = model_kwargs.get("attention_mask")
    mask = torch.ones_like(input_ids) if mask is None else mask
    prompts = [row[m.bool()].tolist() for row, m in zip(input_ids, mask)]
    small = AuxiliaryModel(model, small_tokenizer or large.tokenizer, prompts, "small")
    generated_limit = generation_config.max_new_tokens or (generation_config.max_length - input_ids.shape[1])
    return entropy_adaptive_generate(
        small,
        large,
        input_ids,
        tau,
        window,
        min_tokens,
        generated_limit,
        bool(generation_config.do_sample),
        logits_processor,
        stopping_criteria,
        pad_token_id=generation_config._pad_token_tensor.item() if generation_config._pad_token_tensor is not None else 0,
        costs=costs,
    )
