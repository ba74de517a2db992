"""``refusal``: steer a model trained by ``align train refusal`` through its control tokens
(Jain et al., arXiv:2412.06748). Rows record the token that opened the response in
``"control"``, apart from the text."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError
from .base import DecodingMethod, Run, VLLMForm


@dataclass
class Refusal(DecodingMethod):
    name = "refusal"
    _argument_group_name = "refusal: refusal-token control (2412.06748)"
    records_control = True

    threshold: float | None = field(default=None, metadata={"help": "p[refuse] threshold"})
    category_thresholds: dict[str, float] | str | None = field(
        default_factory=dict,
        metadata={"help": "category mode: {category: threshold} (JSON on the command line); the model's other categories are left to it"},
    )

    def check(self) -> None:
        self.category_thresholds = self.category_thresholds or {}
        if isinstance(self.category_thresholds, str):  # from the command line
            try:
                self.category_thresholds = json.loads(self.category_thresholds)
            except json.JSONDecodeError as err:
                raise ConfigError(f"category_thresholds must be a JSON mapping such as '{{\"ill-posed\": 0.1}}': {err}") from err
            if not isinstance(self.category_thresholds, dict):
                raise ConfigError(f"category_thresholds must be a mapping of category to threshold, got {self.category_thresholds!r}")
        if self.category_thresholds and self.threshold is not None:
            raise ConfigError("threshold is the single-token mode's, category_thresholds the category mode's: give one")
        for name, value in [("threshold", self.threshold), *self.category_thresholds.items()]:
            if value is not None and not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ConfigError(f"refusal threshold for {name!r} must be a probability in [0, 1], got {value!r}")

    def prepare(self, run: Run) -> None:
        self.options = refusal_options(run.store.path(run.args.model), self.threshold, self.category_thresholds)
        missing = [t for t in control_names(self.options) if t not in run.tokenizer.get_vocab()]
        if missing:  # before any model loads
            raise ConfigError(f"method 'refusal': model {run.args.model} has no control tokens {missing}; train it with `align train refusal`")

    def processors(self, run: Run, rows: slice) -> list:
        from decoding import RefusalTokenLogitsProcessor

        return [RefusalTokenLogitsProcessor(run.tokenizer, **self.options)]

    def control(self, run: Run, first: list[int]) -> str | None:
        token = run.tokenizer.convert_ids_to_tokens(first[0]) if first else None
        return token if token in control_names(self.options) else None

    def vllm(self, run: Run) -> VLLMForm:
        return VLLMForm(logits_processors=("decoding.vllm_refusal:RefusalTokenVLLMProcessor",), extra_args={"refusal": self.options})


def refusal_options(model_path: str, threshold: float | None, category_thresholds: dict[str, float]) -> dict[str, Any]:
    """:class:`~decoding.refusal.RefusalTokenLogitsProcessor` keyword arguments for a model trained by
    ``align train refusal``: its control tokens from ``control_tokens.json`` in its directory (else
    ``[refuse]``/``[respond]``, and ``[<category>]`` per category given), with the thresholds."""
    from ..trainers.refusal import TOKENS_FILE

    saved = Path(model_path) / TOKENS_FILE
    tokens = json.loads(saved.read_text()) if saved.is_file() else {}
    respond = tokens.get("respond_token") or "[respond]"
    if not category_thresholds:
        return {"refuse_token": tokens.get("refuse_token") or "[refuse]", "respond_token": respond, "threshold": threshold}
    known = tokens.get("categories") or {c: f"[{c}]" for c in category_thresholds}
    unknown = sorted(set(category_thresholds) - set(known))
    if unknown:
        raise ConfigError(f"category_thresholds: model {model_path} has no categories {unknown}; its categories: {sorted(known)}")
    return {"respond_token": respond, "categories": {token: category_thresholds.get(c) for c, token in known.items()}}


def control_names(options: dict[str, Any]) -> list[str]:
    return [t for t in (options.get("refuse_token"), options.get("respond_token"), *(options.get("categories") or {})) if t]
