"""Refusal-token control as a vLLM V1 logits processor (METHODS §I.2, §D6).

Register the class at engine start and configure each request through ``SamplingParams.extra_args``
with the keyword arguments of :class:`~decoding.refusal.RefusalTokenLogitsProcessor`::

    llm = LLM(model=path, logits_processors=["decoding.vllm_refusal:RefusalTokenVLLMProcessor"])
    params = SamplingParams(temperature=0, max_tokens=32, extra_args={"refusal": {"threshold": 0.3}})

Requests without ``"refusal"`` in ``extra_args`` are untouched. The decision at a request's first
generated token is made by the same transformers processor class (one per request, its stateless
:meth:`~decoding.refusal.RefusalTokenLogitsProcessor.decide`), so both backends decide identically,
also when vLLM prefills a long prompt in chunks and runs logits processors on each chunk. vLLM rejects custom logits processors under speculative decoding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from .refusal import RefusalTokenLogitsProcessor

if TYPE_CHECKING:
    from vllm.config import VllmConfig

KEY = "refusal"


class RefusalTokenVLLMProcessor(LogitsProcessor):
    """Per-request refusal-token threshold / category / bias control at the first response step."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        from transformers import AutoTokenizer

        model_config = vllm_config.model_config
        self.tokenizer = AutoTokenizer.from_pretrained(model_config.tokenizer, trust_remote_code=False)
        self.requests: dict[int, tuple[RefusalTokenLogitsProcessor, list[int]]] = {}

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        options = (sampling_params.extra_args or {}).get(KEY)
        if options is not None and not isinstance(options, dict):
            raise ValueError(f"extra_args[{KEY!r}] must be a mapping of RefusalTokenLogitsProcessor arguments")

    def is_argmax_invariant(self) -> bool:
        return False  # it forces tokens

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.requests.pop(index, None)
        for index, params, _prompt, output_ids in batch_update.added:
            options = (params.extra_args or {}).get(KEY) if params is not None else None
            if options is None:
                self.requests.pop(index, None)
            else:
                self.requests[index] = (RefusalTokenLogitsProcessor(self.tokenizer, **options), output_ids)
        for a, b, direction in batch_update.moved:
            first, second = self.requests.pop(a, None), self.requests.pop(b, None)
            if first is not None:
                self.requests[b] = first
            if direction == MoveDirectionality.SWAP and second is not None:
                self.requests[a] = second

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        # Until a request has an output token, every call is its first sample step or a chunk of
        # its prefill (whose sample vLLM drops), so the stateless rule runs each time and the last
        # call, on the complete prompt, is the one that counts.
        for index, (processor, output_ids) in self.requests.items():
            if not output_ids:
                logits[index] = processor.decide(logits[index : index + 1].float())[0][0].to(logits.dtype)
        return logits
