"""``plain``: the main model alone."""

from __future__ import annotations

from dataclasses import dataclass

from .base import DecodingMethod, Run, VLLMForm


@dataclass
class Plain(DecodingMethod):
    name = "plain"
    _argument_group_name = "plain: the main model alone"

    def vllm(self, run: Run) -> VLLMForm:
        return VLLMForm()
