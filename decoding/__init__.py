"""alignkit's decoding-time half: logits-processor plugins that steer ``model.generate`` with
auxiliary models, each reading its own prompt through its own KV cache (:class:`AuxiliaryModel`).

| method | paper | processor |
|---|---|---|
| emulated fine-tuning (up/down-scaling) | 2310.12962 | :class:`EFTLogitsProcessor` |
| dynamic logits fusion | 2406.15480 | :class:`DLFLogitsProcessor` |
| STEER (contrastive expert guidance + negative prompting) | 2308.07645 | :class:`SteerLogitsProcessor` |
| CFG-style negative prompting | 2306.17806 | :class:`NegativePromptLogitsProcessor` |
| refusal-token control | 2412.06748 | :class:`RefusalTokenLogitsProcessor` |
| GeDi (class-conditional guide) | 2009.06367 | :class:`GeDiLogitsProcessor` |
| entropy adaptive decoding | 2502.06833 | :func:`entropy_adaptive_generate`, :func:`ead_generate` |
| speculative up-scaling (EFT) | 2310.12962 | :func:`speculative_eft_generate` |
"""

from .auxiliary import AuxiliaryModel, check_same_vocab, encode_prompts, log_probs, widen
from .dlf import DLFLogitsProcessor, dlf_select
from .gedi import GeDiLogitsProcessor, gedi_filter, gedi_posterior
from .ead import EADOutput, ead_generate, entropy_adaptive_generate, entropy_bits
from .eft import EFTLogitsProcessor, eft_logprobs, top_p_mask
from .generate import checkpoint_defaults, default_processors
from .negative_prompt import NegativePromptLogitsProcessor, guided_logprobs
from .refusal import RefusalTokenLogitsProcessor, strip_control_tokens
from .speculative_eft import SpeculativeOutput, speculative_eft_generate
from .steer import NegativePool, SteerLogitsProcessor, steer_logprobs

__all__ = [
    "AuxiliaryModel",
    "DLFLogitsProcessor",
    "EADOutput",
    "EFTLogitsProcessor",
    "GeDiLogitsProcessor",
    "NegativePool",
    "NegativePromptLogitsProcessor",
    "RefusalTokenLogitsProcessor",
    "SpeculativeOutput",
    "SteerLogitsProcessor",
    "check_same_vocab",
    "checkpoint_defaults",
    "default_processors",
    "dlf_select",
    "eft_logprobs",
    "ead_generate",
    "encode_prompts",
    "entropy_adaptive_generate",
    "entropy_bits",
    "gedi_filter",
    "gedi_posterior",
    "guided_logprobs",
    "log_probs",
    "speculative_eft_generate",
    "steer_logprobs",
    "strip_control_tokens",
    "top_p_mask",
    "widen",
]
