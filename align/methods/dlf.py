"""``dlf``: dynamic logits fusion (Fan et al., arXiv:2406.15480)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from decoding.fusion import FusionSpec

from .base import DecodingMethod, Run, VLLMForm, fused


@dataclass
class DLF(DecodingMethod):
    """EFT with the experts' weights α chosen at every step (:func:`decoding.dlf_select`)."""

    name = "dlf"
    _argument_group_name = "dlf: dynamic logits fusion (2406.15480)"
    required = ("small_base", "experts")

    small_base: str | None = field(default=None, metadata={"help": "the small base model"})
    experts: list[str] = field(default_factory=list, metadata={"help": "small expert models"})

    def models(self) -> list[str]:
        return [*self.experts, *([self.small_base] if self.small_base else [])]

    def processors(self, run: Run, rows: slice) -> list:
        from decoding import DLFLogitsProcessor

        return [DLFLogitsProcessor(run.tokenizer, run.aux(self.small_base, rows), [run.aux(e, rows) for e in self.experts])]

    def fusion(self, large: str, path: Callable[[str], str] = str) -> FusionSpec:
        """The composite spec (:mod:`decoding.fusion`) with ``large`` as the main model."""
        return FusionSpec("dlf", large=path(large), small_base=path(self.small_base), experts=[path(e) for e in self.experts])

    def vllm(self, run: Run) -> VLLMForm:
        return fused(run, self, lambda path: self.fusion(run.args.model, path))
