"""CHES and length-normalised CHES: which preference pairs will make DPO displace the chosen likelihood.

Razin et al., "Unintentional Unalignment: Likelihood Displacement in Direct Preference
Optimization", arXiv:2410.08847 (METHODS §A6). With ``h_k`` the last hidden state (the unembedding
input) at the position that predicts response token ``k`` — the last prompt token through the
penultimate response token, the EOS position dropped::

    S± = Σ_k h(x, y±_<k)
    CHES    = ⟨S+, S-⟩ - ‖S+‖²
    LN-CHES = ⟨S+, S-⟩ / (|y+| |y-|) - ‖S+‖² / |y+|²

Higher scores are riskier. Scores use the initial policy, no gradients, fp32 sums.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def ches_from_sums(s_chosen: torch.Tensor, s_rejected: torch.Tensor, n_chosen: int, n_rejected: int) -> tuple[float, float]:
    """``(CHES, LN-CHES)`` from the summed hidden states and response lengths."""
    inner = float(s_chosen @ s_rejected)
    norm2 = float(s_chosen @ s_chosen)
    return inner - norm2, inner / (n_chosen * n_rejected) - norm2 / n_chosen**2


def _prompt_and_response(row: Mapping[str, Any], key: str, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    prompt, response = row["prompt"], row[key]
    if isinstance(prompt, str):
        prompt_ids = tokenizer(prompt)["input_ids"]
        text = response
    else:  # conversational: the training template's prompt, the assistant content as the response
        prompt_ids = list(tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True)["input_ids"])
        text = response[-1]["content"] if not isinstance(response, str) else response
    return prompt_ids, tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def hidden_sum(model: PreTrainedModel, prompt_ids: list[int], response_ids: list[int]) -> torch.Tensor:
    """Σ of the last hidden states at the positions predicting each response token (fp32)."""
    if not response_ids:
        raise ValueError("empty response")
    ids = torch.tensor([prompt_ids + response_ids], device=next(model.parameters()).device)
    hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].float()
    first = len(prompt_ids) - 1  # the last prompt token predicts response token 1
    return hidden[first : first + len(response_ids)].sum(0)


def ches_scores(dataset: Dataset, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> Dataset:
    """``dataset`` with ``ches`` and ``ln_ches`` columns (rows with an empty response get ``nan``)."""
    ches, ln = [], []
    model.eval()
    for row in dataset:
        p_c, y_c = _prompt_and_response(row, "chosen", tokenizer)
        p_r, y_r = _prompt_and_response(row, "rejected", tokenizer)
        if not y_c or not y_r:
            ches.append(float("nan"))
            ln.append(float("nan"))
            continue
        c, n = ches_from_sums(hidden_sum(model, p_c, y_c), hidden_sum(model, p_r, y_r), len(y_c), len(y_r))
        ches.append(c)
        ln.append(n)
    return dataset.add_column("ches", ches).add_column("ln_ches", ln)


def filter_by_ches(
    dataset: Dataset,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    keep_fraction: float | None = None,
    drop_top_fraction: float | None = None,
    normalized: bool = True,
) -> Dataset:
    """Keep the pairs with the lowest (LN-)CHES: ``keep_fraction`` of them, or all but the top
    ``drop_top_fraction``. Rows keep their order and gain ``ches``/``ln_ches`` columns; rows with
    an empty response are dropped.

    Example::

        >>> safer = filter_by_ches(pairs, tb.model("small-instruct"), tok, keep_fraction=0.5)  # doctest: +SKIP
    """
    if (keep_fraction is None) == (drop_top_fraction is None):
        raise ValueError("give exactly one of keep_fraction and drop_top_fraction")
    fraction = keep_fraction if keep_fraction is not None else 1.0 - drop_top_fraction
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the kept fraction must be in [0, 1], got {fraction}")
    scored = ches_scores(dataset, model, tokenizer)
    column = scored["ln_ches" if normalized else "ches"]
    valid = [i for i, s in enumerate(column) if s == s]
    keep = sorted(sorted(valid, key=lambda i: column[i])[: round(fraction * len(valid))])
    return scored.select(keep)
