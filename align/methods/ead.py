"""``ead``: entropy adaptive decoding, small model to large and back (arXiv:2502.06833)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .base import DecodingMethod, Run


@dataclass
class EAD(DecodingMethod):
    """The small (main) model decodes until its rolling next-token entropy passes ``tau``; then the
    large model decodes, and back. Rows record ``large_tokens``, the tokens the large model chose."""

    name = "ead"
    _argument_group_name = "ead: entropy adaptive decoding (2502.06833)"
    required = ("large", "tau")
    finite = ("tau",)

    large: str | None = field(default=None, metadata={"help": "the large model (`model` is the small one)"})
    tau: float | None = field(default=None, metadata={"help": "entropy threshold in bits (no published value: sweep it)"})
    window: int = field(default=5, metadata={"help": "tokens in the rolling entropy mean"})
    min_tokens: int = field(default=10, metadata={"help": "tokens on the current model before a switch"})

    def models(self) -> list[str]:
        return [self.large] if self.large else []

    def prepare(self, run: Run) -> None:
        self.large_tokens = [0] * len(run.prompts)

    def generate_kwargs(self, run: Run) -> dict[str, Any]:
        from decoding import ead_generate

        def make_kwargs(rows: slice) -> dict[str, Any]:
            return {"custom_generate": ead_generate, "large": run.aux(self.large, rows), "tau": self.tau,
                    "small_tokenizer": run.tokenizer, "window": self.window, "min_tokens": self.min_tokens}

        def on_output(rows: slice, output: Any) -> None:
            self.large_tokens[rows] = output.tokens_large.tolist()

        return {"make_kwargs": make_kwargs, "on_output": on_output}

    def annotate(self, rows: list[dict[str, Any]]) -> None:
        for row, n in zip(rows, self.large_tokens):
            row["large_tokens"] = n  # EAD's cost: tokens the large model decided
