"""Batched generation with a fresh logits processor per batch (processors are stateful).

Generation settings policy: alignkit decodes exactly with the settings it is given. A checkpoint's
``generation_config.json`` contributes its EOS ids (every id that ends a generation) and nothing
else: its ``repetition_penalty``, ``top_k``, ``no_repeat_ngram_size``, ... do not apply unless the
caller asks for them (``use_model_defaults``, see :func:`checkpoint_defaults`), in which case they
become explicit processors applied to the method's final distribution, identically on the vLLM
backend. ``model.generate`` would otherwise merge them into every call, so greedy would not be
greedy and a fused method would penalise only the main model's scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    MinPLogitsWarper,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .auxiliary import Prompt, encode_prompts

# Every setting that shapes the next-token distribution, at the value that leaves it alone. Passed
# explicitly so that neither the checkpoint's generation config nor transformers' global defaults
# (top_k=50 when sampling) fill them in.
NEUTRAL = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "typical_p": 1.0, "min_p": None, "epsilon_cutoff": 0.0,
           "eta_cutoff": 0.0, "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
           "min_length": 0, "min_new_tokens": None, "num_beams": 1, "length_penalty": 1.0}
# Checkpoint defaults both backends (transformers and vLLM's SamplingParams) apply identically.
PORTABLE_DEFAULTS = {"repetition_penalty": 1.0, "top_k": 0, "top_p": 1.0, "min_p": None}
# Generation-config entries that are identities or alignkit's own arguments, never a checkpoint's to set.
NOT_DEFAULTS = {"bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "transformers_version",
                "_from_model_config", "use_cache", "output_attentions", "output_hidden_states", "output_scores",
                "output_logits", "return_dict_in_generate", "max_length", "max_new_tokens", "do_sample", "temperature",
                "cache_implementation"}


def checkpoint_defaults(model: PreTrainedModel | None) -> dict[str, Any]:
    """The sampling defaults ``model``'s generation config sets (what ``use_model_defaults`` applies):
    ``repetition_penalty``, ``top_k``, ``top_p`` and ``min_p`` where they differ from neutral.
    Decoding mode, temperature and lengths are always the caller's. Any other setting that would
    change decoding (``no_repeat_ngram_size``, ``bad_words_ids``, ...) raises ``ValueError`` naming
    it: vLLM cannot apply it, so the two backends would disagree.

    Example:
        >>> from types import SimpleNamespace
        >>> config = GenerationConfig(do_sample=True, repetition_penalty=1.3, top_k=20)
        >>> sorted(checkpoint_defaults(SimpleNamespace(generation_config=config)).items())
        [('repetition_penalty', 1.3), ('top_k', 20)]
    """
    config = getattr(model, "generation_config", None)
    if config is None:
        return {}
    diff = {k: v for k, v in config.to_diff_dict().items() if k not in NOT_DEFAULTS and v is not None}
    unsupported = sorted(k for k in diff if k not in PORTABLE_DEFAULTS)
    if unsupported:
        raise ValueError(f"use_model_defaults: the checkpoint's generation config sets {unsupported}, which alignkit "
                         f"cannot apply identically on every backend (supported: {', '.join(PORTABLE_DEFAULTS)})")
    return {k: v for k, v in diff.items() if v != PORTABLE_DEFAULTS[k]}


def default_processors(defaults: dict[str, Any], temperature: float | None) -> list[LogitsProcessor]:
    """``defaults`` (from :func:`checkpoint_defaults`) as processors on the final scores: the
    repetition penalty always; with ``temperature`` (sampling), temperature then top-k, top-p and
    min-p, transformers' order (the sampler after them then draws at temperature 1)."""
    out: list[LogitsProcessor] = []
    if defaults.get("repetition_penalty", 1.0) != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(defaults["repetition_penalty"]))
    if temperature is None:
        return out  # greedy: the warpers never move the argmax
    out.append(TemperatureLogitsWarper(temperature))
    if defaults.get("top_k"):
        out.append(TopKLogitsWarper(defaults["top_k"]))
    if defaults.get("top_p", 1.0) < 1.0:
        out.append(TopPLogitsWarper(defaults["top_p"]))
    if defaults.get("min_p") is not None:
        out.append(MinPLogitsWarper(defaults["min_p"]))
    return out


@contextmanager
def exact_settings(model: PreTrainedModel, eos: Sequence[int], pad: int, **settings: Any) -> Iterator[tuple[GenerationConfig, dict]]:
    """The ``GenerationConfig`` to pass ``model.generate`` so that it decodes with ``settings`` and
    nothing else, and the arguments of ``settings`` that are not generation settings (e.g.
    ``custom_generate``). Inside the block ``model.generation_config`` is a bare one (token ids
    only): ``generate`` fills every unset field from it, and a checkpoint's ``suppress_tokens`` or
    ``bad_words_ids`` have no neutral value to pre-empt them with."""
    # top_k is sampling-only: set under greedy it draws an "invalid flag" warning
    config = GenerationConfig(**{k: v for k, v in NEUTRAL.items() if k != "top_k"}, eos_token_id=list(eos), pad_token_id=pad)
    rest = config.update(**settings)
    if config.do_sample:
        config.top_k = NEUTRAL["top_k"]
    saved = model.generation_config
    model.generation_config = GenerationConfig(bos_token_id=saved.bos_token_id, eos_token_id=list(eos), pad_token_id=pad)
    try:
        yield config, rest
    finally:
        model.generation_config = saved


def eos_token_ids(model: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id that ends a generation: ``generation_config.eos_token_id`` (an int or a list, e.g.
    Qwen's ``<|im_end|>`` and ``<|endoftext|>``) and the tokenizer's EOS."""
    ids: list[int] = []
    config = getattr(model, "generation_config", None)
    configured = getattr(config, "eos_token_id", None)
    for i in [configured] if isinstance(configured, int) else list(configured or []):
        ids.append(int(i))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def pad_token_id(tokenizer: PreTrainedTokenizerBase, eos_ids: Sequence[int]) -> int:
    """The tokenizer's pad id; without one, the first EOS id (padding is masked, any id works)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]


def decode_completions(
    tokenizer: PreTrainedTokenizerBase, rows: list[list[int]], eos_ids: Sequence[int] | None = None
) -> list[tuple[str, bool]]:
    """Generated ids -> ``(text, finished)``: text up to the first EOS (any of ``eos_ids``, default
    the tokenizer's; specials dropped), and whether it ended with an EOS (``False`` = truncated at
    the length limit)."""
    stops = set(eos_ids if eos_ids is not None else [tokenizer.eos_token_id])
    out = []
    for row in rows:
        end = next((i for i, t in enumerate(row) if t in stops), None)
        out.append((tokenizer.decode(row if end is None else row[:end], skip_special_tokens=True), end is not None))
    return out


class SeededSampler(LogitsProcessor):
    """Ancestral sampling with one generator per row: each row draws from
    ``softmax(scores / temperature)`` by inverse CDF with uniforms from its own seeded
    ``torch.Generator`` and keeps only the drawn token (0, every other -inf), so greedy ``generate``
    takes it. A row's samples then depend on its seed alone, not on the rows batched with it nor on
    the process that runs it: data-parallel rollouts equal single-process ones. The uniforms are
    drawn ``block`` steps at a time, so the per-step work is one vectorised search.

    Example:
        >>> scores = torch.log(torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]]))
        >>> both = SeededSampler([1, 2])(None, scores).argmax(-1)
        >>> alone = SeededSampler([2])(None, scores[1:]).argmax(-1)   # row 2 by itself, same seed
        >>> bool(both[1] == alone[0])
        True
    """

    def __init__(self, seeds: Sequence[int], temperature: float = 1.0, block: int = 64) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.seeds, self.temperature, self.block = [int(s) for s in seeds], float(temperature), block
        self._generators: list[torch.Generator] = []
        self._uniforms = torch.empty(len(self.seeds), 0)
        self._step = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if len(self.seeds) != scores.shape[0]:
            raise ValueError(f"SeededSampler has {len(self.seeds)} seeds for {scores.shape[0]} rows")
        if self._step % self.block == 0:
            if not self._generators:
                self._generators = [torch.Generator().manual_seed(s) for s in self.seeds]
            # drawn on the CPU, so the same seed gives the same samples on any device
            self._uniforms = torch.stack([torch.rand(self.block, generator=g, dtype=torch.float64) for g in self._generators])
        u = self._uniforms[:, self._step % self.block].to(scores.device)
        self._step += 1
        cdf = torch.softmax(scores.double() / self.temperature, dim=-1).cumsum(-1)
        picks = (cdf < u[:, None] * cdf[:, -1:]).sum(-1).clamp(max=scores.shape[-1] - 1)
        return torch.full_like(scores, float("-inf")).scatter(-1, picks[:, None], 0.0)


@torch.no_grad()
def generate_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[Sequence[int]],
    make_processors: Callable[[slice], list[LogitsProcessor]] | None = None,
    batch_size: int = 64,
    on_batch: Callable[[slice, list[list[int]]], None] | None = None,
    make_kwargs: Callable[[slice], dict] | None = None,
    on_output: Callable[[slice, Any], None] | None = None,
    **generate_kwargs,
) -> list[list[int]]:
    """Left-padded batched ``model.generate`` on token-id prompts; returns each completion's ids up
    to and including its first EOS (any of the model's EOS ids; without one it hit the length
    limit). ``generate`` decodes with ``generate_kwargs`` exactly (module docstring: the checkpoint's
    generation config contributes its EOS ids only). ``make_processors(rows)`` / ``on_batch(rows,
    completions)`` as in :func:`generate_with`;
    ``make_kwargs(rows)`` adds per-batch ``generate`` arguments (e.g. EAD's ``custom_generate`` and
    its large model on those rows' prompts); ``on_output(rows, output)`` sees ``generate``'s raw
    return (e.g. EAD's accounting)."""
    eos = eos_token_ids(model, tokenizer)
    stops = set(eos)
    pad = pad_token_id(tokenizer, eos)
    out: list[list[int]] = []
    device = next(model.parameters()).device
    for start in range(0, len(prompt_ids), batch_size):
        rows = slice(start, min(start + batch_size, len(prompt_ids)))
        batch = [list(r) for r in prompt_ids[rows]]
        width = max(map(len, batch))
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in batch], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in batch], device=device)
        processors = make_processors(rows) if make_processors is not None else []
        extra = make_kwargs(rows) if make_kwargs is not None else {}
        with exact_settings(model, eos, pad, **generate_kwargs, **extra) as (config, rest):
            output = model.generate(input_ids=input_ids, attention_mask=mask, logits_processor=processors,
                                    generation_config=config, **rest)
        if on_output is not None:
            on_output(rows, output)
        generated = getattr(output, "sequences", output)[:, width:].tolist()
        batch_out = []
        for row in generated:
            end = next((i for i, t in enumerate(row) if t in stops), None)
            batch_out.append(row if end is None else row[: end + 1])
        if on_batch is not None:
            on_batch(rows, batch_out)
        out.extend(batch_out)
    return out


def generate_with(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    make_processors: Callable[[slice], list[LogitsProcessor]] | None = None,
    batch_size: int = 64,
    on_batch: Callable[[slice, list[tuple[str, bool]]], None] | None = None,
    **generate_kwargs,
) -> list[tuple[str, bool]]:
    """Generate for every prompt; returns ``(text, finished)`` per prompt (``finished``: ended with
    any of the model's EOS ids; a tokenizer without a pad token pads with EOS).

    ``make_processors(rows)`` builds the processors for the prompts ``prompts[rows]``, so each
    auxiliary model gets the matching slice of its own prompts; ``on_batch(rows, outputs)`` sees
    each batch's outputs before the next batch starts (e.g. to grow STEER's negative pool).

    Example::

        >>> generate_with(large_base, tok, prompts, lambda rows: [EFTLogitsProcessor(tok,
        ...     [AuxiliaryModel(small_instruct, tok, chat[rows])], AuxiliaryModel(small_base, tok, prompts[rows]))],
        ...     do_sample=False, max_new_tokens=8)                                     # doctest: +SKIP
    """
    eos = eos_token_ids(model, tokenizer)

    def texts(rows: slice, ids: list[list[int]]) -> None:
        if on_batch is not None:
            on_batch(rows, decode_completions(tokenizer, ids, eos))

    ids = generate_ids(model, tokenizer, encode_prompts(tokenizer, prompts), make_processors, batch_size, texts,
                       **generate_kwargs)
    return decode_completions(tokenizer, ids, eos)
