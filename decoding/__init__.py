"""alignkit's decoding-time half: logits-processor plugins that steer ``model.generate`` with
auxiliary models, each reading its own prompt through its own KV cache (:class:`AuxiliaryModel`).

| method | paper | processor |
|---|---|---|
| emulated fine-tuning (up/down-scaling) | 2310.12962 | :class:`EFTLogitsProcessor` |
| dynamic logits fusion | 2406.15480 | :class:`DLFLogitsProcessor` |
"""

from .auxiliary import AuxiliaryModel, check_same_vocab, encode_prompts, log_probs, widen
from .dlf import DLFLogitsProcessor, dlf_select
from .eft import EFTLogitsProcessor, eft_logprobs, top_p_mask

__all__ = [
    "AuxiliaryModel",
    "DLFLogitsProcessor",
    "EFTLogitsProcessor",
    "check_same_vocab",
    "dlf_select",
    "eft_logprobs",
    "encode_prompts",
    "log_probs",
    "top_p_mask",
    "widen",
]
