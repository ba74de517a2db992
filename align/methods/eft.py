"""``eft``: emulated fine-tuning, up- and down-scaling (Mitchell et al., arXiv:2310.12962)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from decoding.fusion import FusionSpec

from .base import DecodingMethod, Run, VLLMForm, fused


@dataclass
class EFT(DecodingMethod):
    """``log p̃ = log π_model + Σ_i w_i (log π_tuned_i - log π_reference)``, renormalised."""

    name = "eft"
    _argument_group_name = "eft: emulated fine-tuning (2310.12962)"
    required = ("tuned",)
    finite = ("weights",)

    tuned: list[str] = field(default_factory=list, metadata={"help": "tuned models"})
    reference: str | None = field(default=None, metadata={"help": "reference model (none: the main model)"})
    weights: list[float] = field(default_factory=list, metadata={"help": "one weight per tuned model"})
    upscale_top_p: float | None = field(default=None, metadata={"help": "reweight inside the top-p set"})

    def models(self) -> list[str]:
        return [*self.tuned, *([self.reference] if self.reference else [])]

    def processors(self, run: Run, rows: slice) -> list:
        from decoding import EFTLogitsProcessor

        reference = run.aux(self.reference, rows) if self.reference else None
        return [EFTLogitsProcessor(run.tokenizer, [run.aux(t, rows) for t in self.tuned], reference,
                                   self.weights or [1.0] * len(self.tuned), self.upscale_top_p)]

    def fusion(self, large: str, path: Callable[[str], str] = str) -> FusionSpec:
        """The composite spec (:mod:`decoding.fusion`) with ``large`` as the main model."""
        return FusionSpec("eft", large=path(large), tuned=[path(t) for t in self.tuned],
                          reference=path(self.reference) if self.reference else None, weights=self.weights,
                          upscale_top_p=self.upscale_top_p)

    def vllm(self, run: Run) -> VLLMForm:
        return fused(run, self, lambda path: self.fusion(run.args.model, path))
