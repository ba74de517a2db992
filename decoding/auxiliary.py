"""The one abstraction every multi-model decoder shares: an auxiliary model that follows the tokens
the main model generates, under its own prompt, with its own KV cache.

Multi-model decoding (EFT, DLF, STEER, CFG-style negative prompting, GeDi) runs ``generate`` on one
model and asks other models, at every step, for their next-token distribution given *their own*
prompt (their own chat template, a negative prompt, a control code) followed by the tokens
generated so far. :class:`AuxiliaryModel` does that incrementally: it prefills its prompt once,
then feeds only the new tokens, with ``position_ids`` computed from its own left-padded attention
mask. All distributions are fp32 ``log_softmax`` over the shared tokenizer's
``len(tokenizer)`` ids; padded logit rows beyond it are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

Prompt = str | Sequence[int] | Sequence[Mapping[str, str]]


def syncs_are_free(device: torch.device) -> bool:
    """Whether reading a value back to Python costs nothing (CPU): then processors may branch on the
    data; on accelerators they run fixed shapes so no step waits on a device-to-host copy."""
    return device.type == "cpu"


def check_same_vocab(tokenizers: Mapping[str, PreTrainedTokenizerBase]) -> int:
    """Check every tokenizer maps every token to the same id; return the shared ``len(tokenizer)``.

    Same size is not enough: two vocabularies can agree in size and differ in order.

    Raises:
        ValueError: naming the first two models whose vocabularies differ, and a differing token.
    """
    names = list(tokenizers)
    first = names[0]
    ref = None  # built lazily: get_vocab() of a 152k-token tokenizer costs ~0.1 s, and processors
    # usually get one tokenizer object for every model
    for name in names[1:]:
        if tokenizers[name] is tokenizers[first]:
            continue
        ref = tokenizers[first].get_vocab() if ref is None else ref
        other = tokenizers[name].get_vocab()
        if other != ref:
            diff = sorted(set(ref.items()) ^ set(other.items()), key=lambda kv: kv[1])[:1]
            token = diff[0][0] if diff else "?"
            raise ValueError(
                f"models {first!r} and {name!r} do not share a vocabulary ({len(ref)} vs {len(other)} tokens; "
                f"token {token!r} maps to {ref.get(token)} vs {other.get(token)}): multi-model decoding "
                "needs one tokenizer"
            )
    return len(tokenizers[first])


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt]) -> list[list[int]]:
    """Token ids of each prompt: strings through ``tokenizer(text)`` (its special tokens included),
    message lists through the chat template with the generation prompt, id lists as they are."""
    out = []
    for prompt in prompts:
        if isinstance(prompt, str):
            out.append(tokenizer(prompt)["input_ids"])
        elif len(prompt) and isinstance(prompt[0], Mapping):
            out.append(list(tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True)["input_ids"]))
        else:
            out.append([int(i) for i in prompt])
        if not out[-1]:
            raise ValueError(f"prompt {len(out) - 1} encodes to no tokens")
    return out


def log_probs(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """fp32 ``log_softmax`` over the first ``vocab_size`` logits (the shared tokenizer's ids)."""
    return torch.log_softmax(logits[..., :vocab_size].float(), dim=-1)


def widen(logprobs: torch.Tensor, width: int) -> torch.Tensor:
    """Pad ``[B, V]`` scores with ``-inf`` to the main model's logit width ``[B, width]``."""
    if logprobs.shape[-1] == width:
        return logprobs
    out = logprobs.new_full((*logprobs.shape[:-1], width), float("-inf"))
    out[..., : logprobs.shape[-1]] = logprobs
    return out


class AuxiliaryModel:
    """A model that follows the main model's generation under its own prompt and KV cache.

    Call it from a logits processor with the ``input_ids`` ``generate`` passes; it returns this
    model's next-token log-probabilities ``[B, vocab_size]`` for ``own prompt + generated tokens``.
    The first call fixes where the main prompt ends; later calls feed only the new tokens. One
    instance serves one ``generate`` call: reusing it raises.

    Args:
        model: any causal LM sharing the main model's tokenizer.
        tokenizer: that shared tokenizer (only used to encode ``prompts`` and for ``pad_token_id``).
        prompts: one prompt per batch row: a string (encoded as the tokenizer does, ``<bos>``
            included), chat messages (rendered with the generation prompt), or token ids.
        name: used in error messages.
        score_prompt_from: per row, the index of the first prompt token whose log-probability
            enters :attr:`prompt_logprob` (GeDi scores the text after its control code).

    Example:
        >>> aux = AuxiliaryModel(small_instruct, tok, [[{"role": "user", "content": "37+485="}]])  # doctest: +SKIP
        >>> aux(input_ids).shape   # inside a LogitsProcessor                               # doctest: +SKIP
        torch.Size([1, 96])
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Sequence[Prompt],
        name: str = "auxiliary",
        score_prompt_from: Sequence[int] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.vocab_size = len(tokenizer)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.prompt_ids = encode_prompts(tokenizer, prompts)
        self.device = next(model.parameters()).device
        if score_prompt_from is not None and len(score_prompt_from) != len(self.prompt_ids):
            raise ValueError(f"{name}: score_prompt_from needs one index per prompt")
        self.score_prompt_from = score_prompt_from
        self.prompt_logprob: torch.Tensor | None = None  # [B], after the first call with score_prompt_from
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None
        self._main_prompt: torch.Tensor | None = None
        self._seen = 0  # generated tokens already fed to this model

    @property
    def batch_size(self) -> int:
        return len(self.prompt_ids)

    def _start(self) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(map(len, self.prompt_ids))
        ids = torch.full((self.batch_size, width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(self.prompt_ids):  # left padding, like generate's inputs
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def bind(self, main_prompt: torch.Tensor) -> None:
        """Fix where the main prompt ends without running the model yet.

        A model first needed later (EAD's large model) then prefills its own prompt and every
        token generated so far in one forward.
        """
        if self._main_prompt is not None:
            raise RuntimeError(f"{self.name}: already bound to a generate() call")
        self._main_prompt = main_prompt.clone()

    def rollback(self, n: int) -> None:
        """Forget the last ``n`` generated tokens fed to this model (speculative decoding rejections)."""
        if n < 0 or n > self._seen:
            raise ValueError(f"{self.name}: cannot roll back {n} of {self._seen} generated tokens")
        if n:
            self._cache.crop(-n)  # a negative count removes that many tokens
            self._mask = self._mask[:, :-n]
            self._seen -= n

    def hide(self, kept: torch.Tensor, width: int) -> None:
        """Of the last ``width`` generated tokens fed, keep row ``b``'s first ``kept[b]`` visible and
        mask the rest out of every later forward (their cache entries stay, unattended). Speculative
        decoding lets each row keep its own accepted drafts without making the cache ragged;
        positions come from the mask, so a token after a hole sits where it would without it."""
        if width:
            hidden = torch.arange(width, device=self._mask.device)[None] >= kept.to(self._mask.device)[:, None]
            self._mask[:, -width:] = self._mask[:, -width:].masked_fill(hidden, 0)

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, keep: int = 1) -> torch.Tensor:
        """Log-probs ``[B, V]`` for the next token; with ``keep > 1``, ``[B, keep, V]`` for the
        distributions after each of the last ``keep`` fed positions (scoring drafted tokens)."""
        if input_ids.shape[0] != self.batch_size:
            raise ValueError(
                f"{self.name}: generate runs {input_ids.shape[0]} sequences but {self.batch_size} prompts were "
                "given (num_return_sequences and beam search need one auxiliary prompt per sequence)"
            )
        if self._main_prompt is None:
            self._main_prompt = input_ids.clone()
        start = self._main_prompt.shape[1]
        fresh = self._cache is None
        if input_ids.shape[1] < start + self._seen + (0 if fresh else 1) or not torch.equal(
            input_ids[:, :start], self._main_prompt
        ):
            raise RuntimeError(
                f"{self.name}: this auxiliary model (and its processor) already served another generate() "
                "call; build a new processor for every call"
            )
        new = input_ids[:, start + self._seen :].to(self.device)
        self._seen += new.shape[1]
        if fresh:
            prompt, mask = self._start()
            feed, self._mask = torch.cat([prompt, new], dim=1), torch.cat([mask, torch.ones_like(new)], dim=1)
            self._cache = DynamicCache()
        else:
            feed, self._mask = new, torch.cat([self._mask, torch.ones_like(new)], dim=1)
        positions = (self._mask.cumsum(-1) - 1).clamp(min=0)[:, -feed.shape[1] :]
        score_prompt = self.score_prompt_from is not None and self.prompt_logprob is None
        out = self.model(
            input_ids=feed,
            attention_mask=self._mask,
            position_ids=positions,
            past_key_values=self._cache,
            use_cache=True,
            logits_to_keep=0 if score_prompt else keep,
        )
        if score_prompt:
            width = feed.shape[1] - new.shape[1]
            self.prompt_logprob = self._score_prompt(feed[:, :width], out.logits[:, :width]).to(input_ids.device)
        if keep > 1:
            return log_probs(out.logits[:, -keep:], self.vocab_size).to(input_ids.device)
        return log_probs(out.logits[:, -1], self.vocab_size).to(input_ids.device)

    def _score_prompt(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Σ log p(x_j | x_<j) over prompt tokens j >= score_prompt_from (left padding accounted)."""
        token_lp = log_probs(logits[:, :-1], self.vocab_size).gather(-1, ids[:, 1:, None])[..., 0]  # predicts ids[:, 1:]
        width = ids.shape[1]
        sums = []
        for row, (prompt, start) in enumerate(zip(self.prompt_ids, self.score_prompt_from)):
            first = width - len(prompt) + max(start, 1)  # padded position of the first scored token
            sums.append(token_lp[row, first - 1 :].sum())
        return torch.stack(sums)

    def state(self) -> dict[str, Any]:
        """Tokens this model has consumed so far (prompt and generated), for logging and tests."""
        return {"name": self.name, "prompt_tokens": [len(p) for p in self.prompt_ids], "generated_tokens": self._seen}
