"""``gedi``: a class-conditional LM guides generation (Krause et al., arXiv:2009.06367)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data import plain_text
from .base import DecodingMethod, Run


@dataclass
class GeDi(DecodingMethod):
    """Bayes rule over the guide's two control codes weights the main model's next token."""

    name = "gedi"
    _argument_group_name = "gedi: class-conditional guide (2009.06367)"
    required = ("gedi_model", "desired_code", "anti_code")
    finite = ("omega",)

    gedi_model: str | None = field(default=None, metadata={"help": "the class-conditional guide"})
    desired_code: str = field(default="", metadata={"help": "control code of the desired class"})
    anti_code: str = field(default="", metadata={"help": "control code of the anti class"})
    omega: float = field(default=30.0, metadata={"help": "posterior weight"})

    def models(self) -> list[str]:
        return [self.gedi_model] if self.gedi_model else []

    def processors(self, run: Run, rows: slice) -> list:
        from decoding import GeDiLogitsProcessor

        guide, guide_tok = run.store.load(self.gedi_model)
        texts = [plain_text(p) for p in run.prompts[rows]]
        return [GeDiLogitsProcessor(run.tokenizer, guide, guide_tok, texts, self.desired_code, self.anti_code, self.omega)]
