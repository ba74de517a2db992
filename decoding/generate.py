"""Batched generation with a fresh logits processor per batch (processors are stateful)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import LogitsProcessor, PreTrainedModel, PreTrainedTokenizerBase

from .auxiliary import Prompt, encode_prompts


def decode_completions(tokenizer: PreTrainedTokenizerBase, rows: list[list[int]]) -> list[tuple[str, bool]]:
    """Generated ids -> ``(text, finished)``: text up to the first EOS (specials dropped), and
    whether an EOS was produced at all (``False`` = truncated at the length limit)."""
    out = []
    for row in rows:
        finished = tokenizer.eos_token_id in row
        row = row[: row.index(tokenizer.eos_token_id)] if finished else row
        out.append((tokenizer.decode(row, skip_special_tokens=True), finished))
    return out


@torch.no_grad()
def generate_with(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    make_processors: Callable[[slice], list[LogitsProcessor]] | None = None,
    batch_size: int = 64,
    on_batch: Callable[[slice, list[tuple[str, bool]]], None] | None = None,
    **generate_kwargs,
) -> list[tuple[str, bool]]:
    """Generate for every prompt; returns ``(text, finished)`` per prompt (``finished``: ended with EOS).

    ``make_processors(rows)`` builds the processors for the prompts ``prompts[rows]``, so each
    auxiliary model gets the matching slice of its own prompts; ``on_batch(rows, outputs)`` sees
    each batch's outputs before the next batch starts (e.g. to grow STEER's negative pool).

    Example::

        >>> generate_with(large_base, tok, prompts, lambda rows: [EFTLogitsProcessor(tok,
        ...     [AuxiliaryModel(small_instruct, tok, chat[rows])], AuxiliaryModel(small_base, tok, prompts[rows]))],
        ...     do_sample=False, max_new_tokens=8)                                     # doctest: +SKIP
    """
    ids = encode_prompts(tokenizer, prompts)
    pad = tokenizer.pad_token_id
    out: list[tuple[str, bool]] = []
    device = next(model.parameters()).device
    for start in range(0, len(ids), batch_size):
        rows = slice(start, min(start + batch_size, len(ids)))
        batch = ids[rows]
        width = max(map(len, batch))
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in batch], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in batch], device=device)
        processors = make_processors(rows) if make_processors is not None else []
        generated = model.generate(
            input_ids=input_ids, attention_mask=mask, logits_processor=processors, pad_token_id=pad, **generate_kwargs
        )[:, width:]
        batch_out = decode_completions(tokenizer, generated.tolist())
        if on_batch is not None:
            on_batch(rows, batch_out)
        out.extend(batch_out)
    return out
