"""``steer``: contrastive expert guidance with negative prompting (O'Neill et al., arXiv:2308.07645)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from ..config import ConfigError
from .base import DecodingMethod, Run


@dataclass
class Steer(DecodingMethod):
    """``(1+γ) log p_model - γ log p_base - η log p_model(· | negative example)``, top-k, renormalised;
    the negative pool grows with the outputs."""

    name = "steer"
    _argument_group_name = "steer: contrastive expert guidance + negative prompting (2308.07645)"
    finite = ("gamma", "eta")

    base: str | None = field(default=None, metadata={"help": "base model reading the same prompt"})
    negative_pool_block: int = field(
        default=32, metadata={"help": "the negative pool grows with the outputs after every this many prompts (not batches)"}
    )
    negative_examples: str | None = field(
        default=None, metadata={"help": ".txt/.jsonl of negative examples (each read like a prompt, in the model's format)"}
    )
    gamma: float = field(default=0.2, metadata={"help": "contrast strength"})
    eta: float = field(default=0.6, metadata={"help": "negative-prompt strength"})
    top_k: int | None = field(default=10, metadata={"help": "keep the k best tokens"})

    def check(self) -> None:
        super().check()
        if self.gamma and not self.base:
            raise ConfigError("method 'steer' with gamma != 0 needs 'base'")
        if self.eta and not self.negative_examples:
            raise ConfigError("method 'steer' with eta != 0 needs 'negative_examples'")
        if self.negative_pool_block < 1:
            raise ConfigError("negative_pool_block must be >= 1")

    def models(self) -> list[str]:
        return [self.base] if self.base else []

    def prepare(self, run: Run) -> None:
        from decoding import NegativePool

        from ..generate import read_prompts

        self.pool = NegativePool(read_prompts(self.negative_examples), seed=run.args.seed) if self.negative_examples else None

    def processors(self, run: Run, rows: slice) -> list:
        from decoding import SteerLogitsProcessor

        # each row draws its own negatives (seeded by its sampling seed) from the pool as it stands
        # at its block: the same whichever batch the row runs in
        seeds = run.seeds[rows]
        negatives = [self.pool.sample(seed=zlib.crc32(f"negatives:{s}".encode())) for s in seeds] if self.pool is not None else None
        negative = run.aux(run.args.model, slice(0, len(seeds)), negatives) if negatives else None
        base = run.aux(self.base, rows) if self.base else None
        return [SteerLogitsProcessor(run.tokenizer, base, negative, self.gamma, self.eta, self.top_k)]

    def block_size(self, n: int) -> int:
        return self.negative_pool_block if self.pool is not None else max(1, n)

    def after_block(self, run: Run, ids: list[list[int]]) -> None:
        from decoding.generate import decode_completions, eos_token_ids

        if self.pool is not None:
            model, tok = run.store.load(run.args.model)
            self.pool.add(text for text, _ in decode_completions(tok, ids, eos_token_ids(model, tok)))
