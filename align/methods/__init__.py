"""The decoding methods of ``align generate`` and ``align eval``, one module each.

Each method is a :class:`DecodingMethod` dataclass: its fields are its options (the same CLI flags
and YAML keys as ever; ``align generate --help`` lists them under the method's heading), and it
says which models it reads, how it builds its transformers logits processors and, where it has
one, its vLLM form. Adding a method is one module here plus its line in :data:`METHODS`.

Example:
    >>> from align.methods import METHODS
    >>> sorted(METHODS)
    ['dlf', 'ead', 'eft', 'gedi', 'negative', 'plain', 'refusal', 'steer']
    >>> METHODS["eft"](tuned=["testbed:small-instruct"]).models()
    ['testbed:small-instruct']
"""

from __future__ import annotations

from .base import DecodingMethod, Run, VLLMForm, flat_options, options_of
from .dlf import DLF
from .ead import EAD
from .eft import EFT
from .gedi import GeDi
from .negative import Negative
from .plain import Plain
from .refusal import Refusal
from .steer import Steer

METHODS: dict[str, type[DecodingMethod]] = {m.name: m for m in (Plain, EFT, DLF, Steer, Negative, GeDi, Refusal, EAD)}


__all__ = ["DLF", "EAD", "EFT", "METHODS", "DecodingMethod", "GeDi", "Negative", "Plain", "Refusal", "Run", "Steer", "VLLMForm",
           "flat_options", "options_of"]
