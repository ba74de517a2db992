"""Refusal-token control at inference: decide refuse / respond with one probability at step 0.

Jain et al., "Refusal Tokens: A Simple Way to Calibrate Refusals in Large Language Models",
arXiv:2412.06748. A model fine-tuned to start every response with ``[refuse]`` or
``[respond]`` (or one token per refusal category) exposes its refusal decision as the
first-token distribution ``p = softmax(logits / T_s)``:

* single token, ``threshold=None``: force ``[refuse]`` iff ``p[refuse] >= p[respond]``;
  with a threshold ``t``: force ``[refuse]`` iff ``p[refuse] >= t``, else ``[respond]``;
* categories (subset S with thresholds ``t_k``, ``k* = argmax_k p[k]`` over all category tokens):
  ``k* ∈ S`` and ``p[k*] >= t_k*`` → force ``k*``; ``k* ∈ S`` below → ``[respond]``;
  ``k* ∉ S`` → keep the model's own choice;
* bias mode: add ``b_k`` to the chosen tokens' logits at step 0.

Sweeping the threshold traces a refusal ROC from one model. Steps after the first are untouched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

KEEP = -1  # "leave this row to the model"


def single_token_choice(
    probs: torch.Tensor, refuse_id: int, respond_id: int, threshold: float | None
) -> torch.Tensor:
    """Forced token id per row: ``refuse_id`` or ``respond_id``."""
    p_refuse = probs[:, refuse_id]
    refuse = p_refuse >= (probs[:, respond_id] if threshold is None else torch.full_like(p_refuse, threshold))
    return torch.where(refuse, refuse_id, respond_id)


def first_token_probs(model: Any, tokenizer: Any, prompts: Sequence[Any], batch_size: int = 64) -> torch.Tensor:
    """``softmax`` of the first response token's logits, ``[N, V]`` (T = 1), for prompts as
    :func:`decoding.auxiliary.encode_prompts` reads them (chat messages through the template),
    in left-padded batches: what every threshold of :class:`RefusalTokenLogitsProcessor` decides on.
    Batches hold prompts of similar length (less padding) and only the last position reaches the
    output head; rows come back in the order given, on the CPU (whatever the model's device)."""
    from .auxiliary import encode_prompts
    from .generate import eos_token_ids, pad_token_id

    ids = encode_prompts(tokenizer, prompts)
    pad = pad_token_id(tokenizer, eos_token_ids(model, tokenizer))
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    device = model.get_input_embeddings().weight.device
    out: list[torch.Tensor] = [torch.empty(0)] * len(ids)
    with torch.no_grad():
        for start in range(0, len(ids), batch_size):
            rows = order[start : start + batch_size]
            batch = [ids[i] for i in rows]
            width = max(map(len, batch))
            input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in batch], device=device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in batch], device=device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits[:, -1].float()
            for i, p in zip(rows, torch.softmax(logits, -1)):
                out[i] = p
    return torch.stack(out).cpu()


def category_choice(
    probs: torch.Tensor, category_ids: Sequence[int], thresholds: Sequence[float | None], respond_id: int
) -> torch.Tensor:
    """Forced token id per row, or :data:`KEEP`. ``thresholds[k] = None`` marks a category outside S."""
    ids = torch.tensor(list(category_ids), device=probs.device)
    p = probs[:, ids]  # [B, K]
    best = p.argmax(-1)
    in_subset = torch.tensor([t is not None for t in thresholds], device=probs.device)[best]
    t = torch.tensor([math.inf if t is None else t for t in thresholds], device=probs.device)[best]
    above = p.gather(1, best[:, None])[:, 0] >= t
    forced = torch.where(above, ids[best], torch.full_like(best, respond_id))
    return torch.where(in_subset, forced, torch.full_like(best, KEEP))


def force(scores: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Rows with a token id get all mass on it (log-prob 0, rest -inf); :data:`KEEP` rows are unchanged."""
    forced = torch.full_like(scores, float("-inf"))
    rows = token_ids != KEEP
    forced[rows, token_ids[rows]] = 0.0
    return torch.where(rows[:, None], forced, scores)


class RefusalTokenLogitsProcessor(LogitsProcessor):
    """Threshold or bias control of refusal tokens at the first response step.

    Args:
        tokenizer: the refusal-token model's tokenizer; every control token must be one id in it.
        refuse_token, respond_token: the single-token pair.
        threshold: single-token mode threshold on ``p[refuse]`` (``None``: refuse iff more likely
            than respond).
        categories: category mode: ``{category token: threshold or None}`` for every category
            token; ``None`` marks a category outside the controlled subset S.
        bias: bias mode: ``{token: b}`` added to those logits at step 0 (no forcing).
        temperature: ``T_s`` of the decision softmax.

    Example::

        >>> proc = RefusalTokenLogitsProcessor(tok, threshold=0.3)                    # doctest: +SKIP
        >>> model.generate(**enc, logits_processor=[proc], max_new_tokens=32)        # doctest: +SKIP
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        refuse_token: str = "[refuse]",
        respond_token: str = "[respond]",
        threshold: float | None = None,
        categories: Mapping[str, float | None] | None = None,
        bias: Mapping[str, float] | None = None,
        temperature: float = 1.0,
    ) -> None:
        self.check_options(refuse_token=refuse_token, respond_token=respond_token, threshold=threshold,
                           categories=categories, bias=bias, temperature=temperature)

        def token_id(token: str) -> int:
            # one lookup, not get_vocab(): that builds a dict of the whole vocabulary (~0.1 s at
            # 152k ids), and vLLM builds one processor per request
            index = tokenizer.convert_tokens_to_ids(token)
            if not isinstance(index, int) or tokenizer.convert_ids_to_tokens(index) != token:
                raise ValueError(
                    f"control token {token!r} is not one token of this tokenizer: add it with "
                    "tokenizer.add_special_tokens and resize the model's embeddings (refusal-token SFT does both)"
                )
            return index

        self.respond_id = token_id(respond_token)
        self.refuse_id = token_id(refuse_token) if categories is None and bias is None else None
        self.threshold, self.temperature = threshold, float(temperature)
        self.category_ids = [token_id(t) for t in categories] if categories is not None else None
        self.category_thresholds = list(categories.values()) if categories is not None else None
        self.bias = {token_id(t): float(b) for t, b in bias.items()} if bias is not None else None
        self._prompt: torch.Tensor | None = None
        self.decisions: torch.Tensor | None = None  # forced id per row at step 0 (KEEP = model's own)

    @staticmethod
    def check_options(**options: object) -> None:
        """Raise ``ValueError`` naming the option for anything wrong that needs no tokenizer (unknown
        options, thresholds outside [0, 1], bias combined with forcing, a non-positive temperature):
        the vLLM processor runs it at request admission, before a request reaches the engine.

        Example:
            >>> RefusalTokenLogitsProcessor.check_options(threshold=1.5)
            Traceback (most recent call last):
            ...
            ValueError: threshold must be a probability in [0, 1], got 1.5
        """
        known = ("refuse_token", "respond_token", "threshold", "categories", "bias", "temperature")
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"unknown refusal options {unknown}; valid: {', '.join(known)}")
        threshold, categories, bias = options.get("threshold"), options.get("categories"), options.get("bias")
        temperature = options.get("temperature", 1.0)
        for name in ("refuse_token", "respond_token"):
            if name in options and not (isinstance(options[name], str) and options[name]):
                raise ValueError(f"{name} must be a non-empty token string, got {options[name]!r}")
        for name, value in (("categories", categories), ("bias", bias)):
            if value is not None and not isinstance(value, Mapping):
                raise ValueError(f"{name} must be a mapping of control token to a number, got {value!r}")
        if bias is not None and (threshold is not None or categories is not None):
            raise ValueError("bias mode adds to logits and forces nothing: do not combine it with threshold or categories")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature}")
        for name, value in [("threshold", threshold), *((f"categories[{k!r}]", v) for k, v in (categories or {}).items())]:
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        for token, b in (bias or {}).items():
            if not (isinstance(b, (int, float)) and math.isfinite(b)):
                raise ValueError(f"bias[{token!r}] must be finite, got {b}")

    @property
    def acted(self) -> bool:
        """Whether the step-0 decision has been made (the processor passes through afterwards)."""
        return self._prompt is not None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._prompt is not None:
            n = self._prompt.shape[1]
            if input_ids.shape[1] <= n or not torch.equal(input_ids[:, :n], self._prompt):
                raise RuntimeError("this refusal processor already served another generate() call; build one per call")
            return scores
        self._prompt = input_ids.clone()
        scores, self.decisions = self.decide(scores)
        return scores

    def decide(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The step-0 rule on first-token ``scores`` ``[B, V]``, without state: the controlled scores
        and the forced id per row (:data:`KEEP`: the model's own; ``None`` in bias mode)."""
        if self.bias is not None:
            scores = scores.clone()
            for token, b in self.bias.items():
                scores[:, token] += b
            return scores, None
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.category_ids is not None:
            choice = category_choice(probs, self.category_ids, self.category_thresholds, self.respond_id)
        else:
            choice = single_token_choice(probs, self.refuse_id, self.respond_id, self.threshold)
        return force(scores, choice), choice


def strip_control_tokens(texts: Sequence[str], tokens: Sequence[str]) -> list[str]:
    """Remove a leading control token (and the space a template may put after it) from each text."""
    out = []
    for text in texts:
        for token in tokens:
            if text.startswith(token):
                text = text[len(token) :].lstrip(" ")
                break
        out.append(text)
    return out
