"""``negative``: CFG-style negative prompting (Sanchez et al., arXiv:2306.17806)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import DecodingMethod, Run


@dataclass
class Negative(DecodingMethod):
    """``γ [log p(· | prompt) - log p_negative(· | negative prompt)] + log p_negative(· | negative prompt)``
    (γ = 1: the model unchanged)."""

    name = "negative"
    _argument_group_name = "negative: CFG-style negative prompting (2306.17806)"
    required = ("negative_prompt",)
    finite = ("guidance_scale",)

    negative_model: str | None = field(default=None, metadata={"help": "model for the negative prompt"})
    negative_prompt: str = field(
        default="", metadata={"help": "the negative prompt, read like the prompts (through the negative model's chat template when it has one)"}
    )
    guidance_scale: float = field(default=1.5, metadata={"help": "the guidance weight γ"})

    def models(self) -> list[str]:
        return [self.negative_model] if self.negative_model else []

    def processors(self, run: Run, rows: slice) -> list:
        from decoding import NegativePromptLogitsProcessor

        n = len(range(*rows.indices(len(run.prompts))))
        negative = run.aux(self.negative_model or run.args.model, slice(0, n), [self.negative_prompt] * n)
        return [NegativePromptLogitsProcessor(run.tokenizer, negative, self.guidance_scale)]
